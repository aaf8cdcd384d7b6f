"""Issue 4: sampling and evaluation scripts, the metrics (FID/KID/CLIP score/saturation), DrawBench, pareto plots.

One tiny checkpoint (16 px, 4 steps) is trained per module; scripts run on it in seconds. Thresholding's and the
samplers' closed forms are in test_diffusion.py; the judge's validation in test_judge.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from test_encoders import _clip_tokenizer

from imagen.checkpoint import flatten, load_model
from imagen.eval.drawbench import DrawBenchEval, load_drawbench
from imagen.eval.features import InceptionFeatures, ShapesFeatures
from imagen.eval.learning_curve import curve_points, wilson_interval
from imagen.eval.metrics import FidKid, clip_score, clip_score_metric, saturation, to_unit
from imagen.eval.pareto import read_metrics
from imagen.eval.shapes_eval import HoldoutEval, ShapesEval, SingleObjectEval
from imagen.eval.thresholding_trace import TracedThresholding, pixel_stats
from imagen.run import run

from conftest import ROOT, compose_cfg, tiny_overrides

sys.path.insert(0, str(ROOT / "scripts"))
import evaluate as evaluate_script  # noqa: E402
import plot_learning_curve  # noqa: E402
import plot_pareto  # noqa: E402
import trace_thresholding  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("tiny_run")
    run(compose_cfg(tiny_overrides(tmp, steps=4)))
    return tmp / "run" / "checkpoints" / "last.ckpt"


def eval_cfg(overrides: list[str]):
    return compose_cfg(overrides, "evaluate")


# ------------------------------------------------------------------------------------- checkpoint


def test_checkpoint_rebuilds_the_trained_model(ckpt):
    module, cfg, info = load_model(ckpt, device="cpu")
    assert info["global_step"] == 4 and info["ema"] and cfg.image_size == 16
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    loaded = module.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state["state_dict"].items())  # the EMA weights, exactly
    raw, _, raw_info = load_model(ckpt, ema=False, device="cpu")
    assert not raw_info["ema"]
    differs = any(not torch.equal(a, b) for a, b in zip(module.unet.parameters(), raw.unet.parameters()))
    assert differs, "the EMA and the raw weights should differ after EMA updates"


def test_checkpoint_errors_name_the_problem(tmp_path, ckpt):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_model(tmp_path / "nope.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    del state["imagen_config"]
    torch.save(state, tmp_path / "old.ckpt")
    with pytest.raises(ValueError, match="imagen_config"):
        load_model(tmp_path / "old.ckpt")
    with pytest.raises(ValueError, match="does not match"):
        load_model(ckpt, {"unet.channels": 64}, device="cpu")
    assert flatten({"encoder": {"path": "/x"}, "seed": 1}) == {"encoder.path": "/x", "seed": 1}


def test_sampling_is_deterministic_given_the_seed(ckpt):
    module, _, _ = load_model(ckpt, device="cpu")
    from imagen.cascade.cascade import Cascade, StageSettings, generate_cascade
    from imagen.diffusion.samplers import AncestralSampler, DDIMSampler
    from imagen.diffusion.thresholding import DynamicThresholding

    caps = ["a red circle", "two blue squares", "a green triangle"]
    for sampler in (AncestralSampler(steps=3), DDIMSampler(steps=3)):
        cascade = Cascade([module], [StageSettings(3.0, sampler, DynamicThresholding())])
        a, b, c = (generate_cascade(cascade, caps, seed=s, batch_size=2, progress=False)[0] for s in (5, 5, 6))
        assert a.shape == (3, 3, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)


# ----------------------------------------------------------------------------- trace_thresholding.py


def test_traced_thresholding_records_closed_form_stats_and_passes_the_output_through():
    from imagen.diffusion.thresholding import DynamicThresholding

    x0 = torch.stack([torch.linspace(-3.0, 3.0, 300), torch.linspace(-0.5, 0.5, 300)]).view(2, 3, 10, 10)
    traced = TracedThresholding(DynamicThresholding(90.0), percentile=90.0)
    out = traced(x0)
    assert torch.equal(out, DynamicThresholding(90.0)(x0))
    (row,) = traced.steps
    # |x| of image 0 is uniform-ish on [0, 3], image 1 on [0, 0.5]: their 90th percentiles ~2.7 and ~0.45.
    assert row["s_median"] == pytest.approx((2.7 + 0.45) / 2, abs=0.02)
    assert row["beyond_1"] == pytest.approx(200 / 600, abs=0.01)  # two thirds of image 0, none of image 1
    assert row["mean_abs"] == pytest.approx((1.5 + 0.25) / 2, abs=0.01)
    assert row["out_mean_abs"] == pytest.approx(out.abs().mean().item())
    assert pixel_stats(torch.zeros(3, 3, 4, 4)) == {"s_median": 0.0, "beyond_1": 0.0, "mean_abs": 0.0}


def trace_cfg(ckpt, *overrides):
    return compose_cfg([f"ckpt={ckpt}", "device=cpu", "sampler.steps=2", *overrides], "trace_thresholding")


def test_trace_thresholding_writes_every_setting_per_step(ckpt, tmp_path):
    cfg = trace_cfg(
        ckpt,
        "prompt=[two red circles,a blue square]",
        "n=1",
        "batch_size=1",
        "guidances=[1,4]",
        "thresholdings=[static,dynamic]",
        "n_reference=4",
    )
    trace_thresholding.trace(cfg, tmp_path)
    saved = json.loads((tmp_path / "trace.json").read_text())
    assert (tmp_path / "trace.png").is_file() and saved["captions"] == ["two red circles", "a blue square"]
    assert list(saved["settings"]) == ["static w=1", "static w=4", "dynamic w=1", "dynamic w=4"]
    for setting in saved["settings"].values():
        assert len(setting["steps"]) == 2  # one row per sampling step, the 2 chunks averaged
    # The first step sees the same z and network under both thresholdings: the same s before thresholding.
    first = {k: v["steps"][0]["s_median"] for k, v in saved["settings"].items()}
    assert first["static w=4"] == pytest.approx(first["dynamic w=4"])
    assert 0 < saved["reference"]["mean_abs"] <= 1 and saved["reference"]["beyond_1"] == 0
    # The checkpoint is loaded once for every setting: a setting traced after the others is traced as if alone.
    alone = trace_cfg(ckpt, "prompt=[two red circles,a blue square]", "n=1", "batch_size=1", "guidances=[4]",
                      "thresholdings=[dynamic]", "n_reference=0")  # fmt: skip
    (tmp_path / "alone").mkdir()
    trace_thresholding.trace(alone, tmp_path / "alone")
    alone_saved = json.loads((tmp_path / "alone" / "trace.json").read_text())["settings"]["dynamic w=4"]
    assert alone_saved == saved["settings"]["dynamic w=4"]
    with pytest.raises(ValueError, match="valid"):
        trace_thresholding.trace(trace_cfg(ckpt, "thresholdings=[nope]"), tmp_path)


# ---------------------------------------------------------------------------------------- sample.py


@pytest.mark.slow
def test_sample_script_writes_grid_and_images_with_metadata(ckpt, tmp_path):
    out = tmp_path / "s"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "sample.py"),
        f"ckpt={ckpt}",
        "prompt=[two red circles,a blue square]",
        "guidance=5",
        "thresholding=dynamic",
        "sampler=ddim",
        "sampler.steps=2",
        "seed=3",
        "n=2",
        f"hydra.run.dir={out}",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    images = sorted((out / "images").glob("*.png"))
    assert len(images) == 4 and (out / "grid.png").is_file()
    meta = Image.open(images[0]).text
    assert meta["prompt"] == "two red circles" and meta["seed"] == "3" and float(meta["guidance"]) == 5.0
    assert meta["thresholding"] == "dynamic" and meta["sampler"] == "ddim" and meta["ckpt"] == str(ckpt)
    # Same command, same seed: the same pixels.
    res2 = subprocess.run(cmd[:-1] + [f"hydra.run.dir={tmp_path / 's2'}"], capture_output=True, text=True, timeout=240)
    assert res2.returncode == 0
    again = sorted((tmp_path / "s2" / "images").glob("*.png"))
    assert len(again) == len(images) > 0
    assert all((Image.open(a).tobytes() == Image.open(b).tobytes()) for a, b in zip(images, again))


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,message",
    [
        (["prompt=null"], "no prompt"),
        (["prompt=x", "n=0"], "n must be >= 1"),
        (["prompt=x", "thresholding=nope"], "dynamic"),  # an unknown option lists the valid ones
    ],
)
def test_sample_script_bad_input_is_one_line(ckpt, args, message):
    cmd = [sys.executable, str(ROOT / "scripts" / "sample.py"), f"ckpt={ckpt}", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and message in res.stderr


# -------------------------------------------------------------------------------------------- metrics


def test_saturation_counts_pixels_at_the_range_ends():
    x = torch.zeros(1, 3, 4, 4)
    x[0, 0, 0, :2] = 1.0
    x[0, 1, 0, 0] = -1.0
    x[0, 2, 0, 0] = 0.999  # rounds to 255 after 8-bit quantisation
    s = saturation(x)
    assert s["saturated_high"] == pytest.approx(3 / 48) and s["saturated_low"] == pytest.approx(1 / 48)
    assert s["saturated"] == pytest.approx(4 / 48)


def _world_images(n: int, seed: int, resolution: int = 32, blur: float = 0.0) -> torch.Tensor:
    from PIL import ImageFilter

    from imagen.data.shapes import ShapesWorld

    world = ShapesWorld(resolution=resolution)
    imgs = []
    for i in range(n):
        img = world.sample(i, seed=seed, split="val").image
        if blur:
            img = img.filter(ImageFilter.GaussianBlur(blur))
        imgs.append(torch.from_numpy(__import__("numpy").asarray(img)).permute(2, 0, 1).float() / 127.5 - 1)
    return torch.stack(imgs)


def test_fid_kid_small_for_same_distribution_large_for_a_shifted_one():
    features = ShapesFeatures()
    real, same, blurred = _world_images(120, 1), _world_images(120, 2), _world_images(120, 2, blur=1.5)
    assert features(torch.rand(2, 3, 32, 32)).shape == (2, features.num_features)
    m = FidKid(features, kid_subset_size=50)
    m.update_real(real)
    m.update_fake(same)
    near = m.compute()
    m.reset_fake()
    m.update_fake(blurred)
    far = m.compute()
    assert far["fid"] > 1.5 * near["fid"] and far["kid"] > near["kid"] + 3 * near["kid_std"]
    assert abs(near["kid"]) < 3 * near["kid_std"] + 1e-3  # unbiased: ~0 for the same distribution
    # identical sets: FID 0 up to the matrix square root's precision
    m2 = FidKid(features, kid_subset_size=50)
    m2.update_real(real)
    m2.update_fake(real)
    assert m2.compute()["fid"] == pytest.approx(0.0, abs=1e-2)


def test_inception_without_torch_fidelity_says_what_to_do():
    pytest.importorskip("torch")
    try:
        import torch_fidelity  # noqa: F401

        pytest.skip("torch-fidelity is installed here")
    except ImportError:
        pass
    with pytest.raises(OSError, match="features=shapes"):
        InceptionFeatures()


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A tiny random CLIPModel + processor saved like a hub folder."""
    tok = _clip_tokenizer()
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    folder = tmp_path_factory.mktemp("tiny_clip")
    transformers.CLIPModel(config).save_pretrained(folder)
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(folder)
    return folder


def test_clip_score_through_torchmetrics_with_a_local_model(tiny_clip):
    metric = clip_score_metric(str(tiny_clip))
    images = _world_images(4, 0)
    captions = ["a red circle", "two blue squares", "a green triangle", "one square"]
    score = clip_score(metric, images, captions)
    # Independently: CLIP's projected embeddings of the processed inputs, 100 x cosine averaged, clipped at 0.
    model, processor = (
        transformers.CLIPModel.from_pretrained(tiny_clip),
        transformers.CLIPProcessor.from_pretrained(tiny_clip),
    )
    pixels = [(to_unit(im) * 255).to(torch.uint8) for im in images]
    inputs = processor(text=captions, images=pixels, return_tensors="pt", padding=True)
    with torch.no_grad():
        img = model.visual_projection(model.vision_model(pixel_values=inputs["pixel_values"]).pooler_output)
        text = model.text_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        txt = model.text_projection(text.pooler_output)
    expected = (100 * torch.nn.functional.cosine_similarity(img, txt)).mean().clamp(min=0)
    assert score == pytest.approx(float(expected), abs=1e-3)
    with pytest.raises(OSError, match="eval.clip"):
        clip_score_metric(str(tiny_clip.parent / "missing_clip"))


# ------------------------------------------------------------------------------------------ DrawBench


def _drawbench_csv(path: Path) -> Path:
    path.write_text(
        'Prompt,Category,Note\n"A red colored car.",Colors,x\nThree cats.,Counting,\n'
        '"A blue cube, left of a ball.",Positional,\nOne dog.,Counting,\n'
    )
    return path


def test_drawbench_loader(tmp_path):
    rows = load_drawbench(_drawbench_csv(tmp_path / "db.csv"))
    assert rows[0] == {"caption": "A red colored car.", "category": "Colors"} and len(rows) == 4
    assert len(load_drawbench(tmp_path / "db.csv", ["Counting"])) == 2
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        load_drawbench(tmp_path / "missing.csv")
    (tmp_path / "bad.csv").write_text("Text,Category\nx,y\n")
    with pytest.raises(ValueError, match="Prompt"):
        load_drawbench(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="Counting"):
        load_drawbench(tmp_path / "db.csv", ["Nope"])
    assert len(DrawBenchEval(str(tmp_path / "db.csv"), per_prompt=3).prompts()) == 12


# ------------------------------------------------------------------------------------- evaluate.py


def test_evaluate_writes_metrics_pareto_and_grids(ckpt, tmp_path):
    cfg = eval_cfg(
        [
            f"ckpt={ckpt}",
            "guidance=[1,4]",
            "sampler.steps=2",
            "eval.n_per_category=3",
            "eval.n_reference_per_category=6",
            "logger=csv",
            "grid_per_category=2",
            "kid_subset_size=10",
        ]
    )
    out = tmp_path / "ev"
    metrics = evaluate_script.evaluate(cfg, out)
    saved = read_metrics(out)
    assert saved == json.loads(json.dumps(metrics))
    assert saved["features"] == "shapes-v1" and saved["n_samples"] == 12 and saved["n_reference"] == 24
    assert saved["alignment_key"] == "judge/accuracy" and saved["reference"]["judge/accuracy"] >= 0.9
    assert [r["guidance"] for r in saved["results"]] == [1.0, 4.0]
    for r in saved["results"]:
        assert r["n_samples"] == 12 and r["fid"] >= 0 and 0 <= r["judge/accuracy"] <= 1
        assert {"judge/counting", "judge/colors", "judge/positional", "judge/descriptions", "saturated", "kid"} <= set(
            r
        )
    assert (out / "pareto.png").is_file() and (out / "categories.png").is_file()
    assert sorted(p.name for p in (out / "grids").glob("*.png")) == ["w1.png", "w4.png"]
    assert (out / "metrics.csv").is_file()

    # Several runs in one plot, plus the markdown table.
    plot_pareto.main(
        [str(out), str(out / "metrics.json"), "--out", str(tmp_path / "p.png"), "--label", "thresholding", "seed"]
    )
    assert (tmp_path / "p.png").is_file() and (tmp_path / "p_categories.png").is_file()


def test_evaluate_drawbench_grids_without_reference(ckpt, tmp_path, tiny_clip):
    csv = _drawbench_csv(tmp_path / "db.csv")
    cfg = eval_cfg(
        [
            f"ckpt={ckpt}",
            "eval=drawbench",
            f"eval.csv={csv}",
            "eval.per_prompt=2",
            f"eval.clip={tiny_clip}",
            "guidance=[3]",
            "sampler.steps=2",
            "logger=none",
            "grid_per_category=2",
        ]
    )
    metrics = evaluate_script.evaluate(cfg, tmp_path / "db")
    row = metrics["results"][0]
    assert metrics["n_reference"] == 0 and "fid" not in row and metrics["n_samples"] == 8
    assert {"clip_score", "clip_score/Colors", "clip_score/Counting"} <= set(row)
    assert (tmp_path / "db" / "grids" / "w3.png").is_file()


@pytest.mark.parametrize(
    "override,message",
    [
        ("guidance=[]", "guidance must be a non-empty list"),
        ("guidance=[-1]", "guidance must be a non-empty list"),
        ("eval.n_per_category=0", "n_per_category"),
    ],
)
def test_evaluate_bad_values_fail_before_sampling(ckpt, override, message):
    with pytest.raises(ValueError, match=message):
        evaluate_script.evaluate(eval_cfg([f"ckpt={ckpt}", "logger=none", override]), Path("unused"))


def test_shapes_eval_prompts_are_balanced_and_unseen():
    suite = ShapesEval(n_per_category=5, n_reference_per_category=7)
    suite.bind(compose_cfg([]), 32)
    prompts = suite.prompts()
    cats = [p["category"] for p in prompts]
    assert {c: cats.count(c) for c in set(cats)} == {"counting": 5, "colors": 5, "positional": 5, "descriptions": 5}
    ref = suite.reference()
    assert ref.shape == (28, 3, 32, 32) and ref.min() >= -1 and ref.max() <= 1
    assert not {p["index"] for p in prompts} & {p["index"] for p in suite.reference_prompts()}


def test_single_object_eval_draws_only_single_objects():
    suite = SingleObjectEval(n_per_category=12, n_reference_per_category=4).bind(compose_cfg([]), 32)
    prompts = suite.prompts()
    assert len(prompts) == 12 and {p["category"] for p in prompts} == {"counting"}
    assert all(len(p["objects"]) == 1 and p["constraints"][0]["n"] == 1 for p in prompts)


@pytest.mark.slow
def test_holdout_eval_splits_novel_and_seen_prompts():
    world = [
        "data.world.holdout_pairs=[red triangle]",
        "data.world.holdout_relations=[[blue circle,left_of,green square]]",
        # the `_tiny` recipe's balanced mix (the default world is 76.5 % single objects: too few relations to draw from)
        "data.world.categories={counting:0.5,colors:0.3,positional:0.15,descriptions:0.05}",
    ]
    suite = HoldoutEval(n_per_category=6, n_reference_per_category=4).bind(compose_cfg(world), 32)
    prompts = suite.prompts()
    novel = [p for p in prompts if p["novel"]]
    for cat in ("counting", "colors", "positional", "descriptions"):
        assert sum(p["category"] == cat and p["novel"] for p in prompts) == 6
        assert sum(p["category"] == cat and not p["novel"] for p in prompts) == 6

    def names_holdout(p):
        objs = {(o["color"], o["shape"]) for o in p["objects"]}
        rel = any(
            c["type"] == "relation"
            and {(c["subject"]["color"], c["subject"]["shape"]), (c["object"]["color"], c["object"]["shape"])}
            == {("blue", "circle"), ("green", "square")}
            for c in p["constraints"]
        )
        return ("red", "triangle") in objs or rel

    assert all(names_holdout(p) for p in novel)
    assert not any(names_holdout(p) for p in prompts if not p["novel"])
    # the judge scores each group: ground-truth renders of the prompts are all correct, in both groups
    images = torch.stack([torch.from_numpy(np.array(suite.world.render(p["objects"]))) for p in prompts])
    scores = suite.score(images.permute(0, 3, 1, 2).float() / 127.5 - 1, prompts)
    assert scores["judge/novel/accuracy"] == scores["judge/seen/accuracy"] == scores["judge/accuracy"] == 1.0
    assert scores["judge/novel/n/all"] == scores["judge/seen/n/all"] == 24
    with pytest.raises(ValueError, match="holdout_pairs"):
        HoldoutEval().bind(compose_cfg([]), 32)
    relations_only = HoldoutEval(n_per_category=3).bind(compose_cfg(world[1:]), 32).prompts()
    assert {(p["category"], p["novel"]) for p in relations_only} == {
        ("counting", False),
        ("colors", False),
        ("positional", False),
        ("positional", True),
        ("descriptions", False),
        ("descriptions", True),
    }  # a relation can make only positional and descriptions captions novel


def test_wilson_interval_closed_form():
    lo, hi = wilson_interval(0.5, 100)  # centre 0.5, half-width z sqrt(0.25/100 + z^2/40000) / (1 + z^2/100)
    z = 1.959963984540054
    half = z * (0.25 / 100 + z * z / 40000) ** 0.5 / (1 + z * z / 100)
    assert lo == pytest.approx(0.5 - half) and hi == pytest.approx(0.5 + half)
    assert wilson_interval(0.0, 10)[0] == 0.0 and 0 < wilson_interval(0.0, 10)[1] < 0.35
    assert wilson_interval(1.0, 256)[1] == pytest.approx(1.0) and wilson_interval(1.0, 256)[0] > 0.98


def test_learning_curve_reads_train_minutes_and_plots(tmp_path, capsys):
    runs = []
    for k, (seconds, acc) in enumerate([(600.0, 0.5), (120.0, 0.25)]):
        m = {
            "ckpt": f"c{k}",
            "step": 100 * (k + 1),
            "train_seconds": seconds,
            "results": [
                {"guidance": 1.0, "judge/colors": 0.0, "judge/n/colors": 4},
                {"guidance": 3.0, "judge/colors": acc, "judge/n/colors": 4},
            ],
        }
        (tmp_path / f"e{k}").mkdir()
        (tmp_path / f"e{k}" / "metrics.json").write_text(json.dumps(m))
        runs.append(m)
    points = curve_points(runs, 3.0, ["colors"])
    assert [p["minutes"] for p in points] == [2.0, 10.0] and [p["colors"][0] for p in points] == [0.25, 0.5]
    plot_learning_curve.main(
        [
            str(tmp_path / "e0"),
            str(tmp_path / "e1"),
            "--guidance",
            "3",
            "--categories",
            "colors",
            "--out",
            str(tmp_path / "c.png"),
        ]
    )
    assert (tmp_path / "c.png").is_file() and "| 2.0 | 200 | 0.250" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        plot_learning_curve.main([str(tmp_path / "e0"), "--guidance", "7"])


def test_checkpoints_store_the_training_wall_time(ckpt):
    _, _, info = load_model(ckpt)
    assert info["train_seconds"] is not None and info["train_seconds"] > 0


def test_evaluate_on_webdataset_shards_uses_their_images_as_reference(ckpt, tmp_path):
    shards = sorted(ckpt.parents[2].glob("data/**/*.tar"))
    assert shards, "the tiny run's shapes shards"
    cfg = eval_cfg(
        [
            f"ckpt={ckpt}",
            "eval=webdataset",
            f"eval.urls={shards[0]}",
            "eval.n=6",
            "guidance=[2]",
            "sampler.steps=2",
            "logger=none",
            "grid_per_category=3",
            "kid_subset_size=4",
        ]
    )
    metrics = evaluate_script.evaluate(cfg, tmp_path / "wds")
    assert metrics["n_reference"] == 6 and metrics["n_samples"] == 6 and metrics["suite"] == "shards"
    assert metrics["results"][0]["fid"] >= 0 and "clip_score" not in metrics["results"][0]
    with pytest.raises(FileNotFoundError, match="missing.tar"):
        evaluate_script.evaluate(
            eval_cfg([f"ckpt={ckpt}", "eval=webdataset", f"eval.urls={tmp_path}/missing.tar", "logger=none"]),
            tmp_path / "x",
        )


@pytest.mark.slow
def test_benchmark_script_times_sampling_and_training(capsys):
    import benchmark

    tiny = [
        "image_size=16",
        "unet.channel_mult=[1,2]",
        "unet.attn_resolutions=[8]",
        "bench.batch_size=2",
        "bench.repeats=1",
    ]
    benchmark.main(tiny + ["bench.mode=sample", "sampler=ddim", "sampler.steps=2"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["mode"] == "sample" and out["sampler_steps"] == 2 and out["median_s_per_image"] > 0
    benchmark.main(tiny + ["bench.steps=1", "bench.warmup=1"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["median_s_per_step"] > 0
    with pytest.raises(SystemExit):
        benchmark.main(tiny + ["bench.mode=nope"])
