"""Text-to-image pipelines from the command line: tiny random-weight SD / SDXL / SD3 / FLUX folders
(built offline, tests/tiny_pipelines.py), learning at NFE 3 from a 3-prompt file, the learned
scheduler inside the real diffusers pipeline class against s4s's own loop, cache keys, prompt files,
evaluation (held-out prompts, decoded distances, CLIP score against torchmetrics)."""

import json
import logging

import pytest
import torch

import s4s
from s4s.cli import main
from s4s.integrations.diffusers_scheduler import S4SScheduler
from s4s.text2image import TextToImageOptions, read_prompts
from s4s.teacher import make_teacher_data, sample_noise
from tiny_pipelines import tiny_clip, tiny_flux, tiny_sd3, tiny_sd_text, tiny_sdxl

PROMPTS = ["a cat", "a dog", "an owl"]   # each fits the tiny tokenizers' 8 tokens
HELD_OUT = ["a fox", "a bee"]
FAMILIES = {  # name: (builder, image side in pixels, extra CLI flags)
    "sd": (tiny_sd_text, 8, ["--dtype", "bf16"]),   # learned in bf16, checked in fp32 below
    "sdxl": (tiny_sdxl, 8, ["--negative-prompt", "blurry"]),
    "sd3": (tiny_sd3, 8, []),
    "flux": (tiny_flux, 16, ["--max-sequence-length", "8"]),
}
GUIDANCE = 2.0


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each family's tiny pipeline saved as a local folder, plus the live pipeline it came from."""
    root = tmp_path_factory.mktemp("t2i")
    out = {}
    for name, (build, _, _) in FAMILIES.items():
        pipe = build(root / f"tok_{name}")
        pipe.save_pretrained(root / name)
        out[name] = (root / name, pipe)
    return out


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def _learn_cli(folder, prompts, out, side, extra, *more):
    args = ["learn", "--model", str(folder), "--prompts", str(prompts), "--guidance", str(GUIDANCE), "--nfe", "3",
            "--preset", "fast", "--steps", "2", "--val-every", "2", "--teacher-samples", "8", "--teacher", "unipc_bh2:8",
            "--height", str(side), "--width", str(side), "--device", "cpu", "--out", str(out), *extra, *more]
    assert main(args) == 0
    return s4s.Solver.load(out)


def _pipeline_run(pipe, solver, prompts, latents, side, **kw):
    base = pipe.scheduler
    pipe.scheduler = S4SScheduler.from_solver(solver, base)
    try:
        return pipe(prompts, latents=latents, guidance_scale=GUIDANCE, num_inference_steps=solver.nfe, height=side,
                    width=side, output_type="latent", **kw).images
    finally:
        pipe.scheduler = base


@pytest.mark.parametrize("name", list(FAMILIES))
def test_learned_from_the_cli_and_used_in_the_real_pipeline_class(name, folders, prompt_file, tmp_path):
    from diffusers import DiffusionPipeline

    folder, pipe = folders[name]
    _, side, extra = FAMILIES[name]
    solver = _learn_cli(folder, prompt_file, tmp_path / "solver.json", side, extra)
    meta = solver.metadata
    assert meta["pipeline"] == type(pipe).__name__ and (meta["height"], meta["width"]) == (side, side)
    assert meta["guidance"] == GUIDANCE and len(meta["prompt_hashes"]) == len(PROMPTS)
    assert meta["model_dtype"] == ("bfloat16" if name == "sd" else "float32")
    assert ("mu" in meta) == (name == "flux")  # FLUX's scheduler shifts by resolution; SD3's tiny one does not

    negative = "blurry" if name == "sdxl" else None
    seq = {"max_sequence_length": 8} if name == "flux" else {}
    model = s4s.load_model(folder, text=TextToImageOptions(tuple(HELD_OUT), negative, side, side, **seq))
    latents = torch.randn((2, *model.sample_shape), generator=torch.Generator().manual_seed(3))
    kw = {"negative_prompt": negative} if negative else {}
    out = _pipeline_run(pipe, solver, HELD_OUT, latents, side, **kw, **seq)  # the pipeline encodes the prompts itself
    init = 1.0 if isinstance(model.schedule, s4s.Flow) else float(S4SScheduler.from_solver(solver, pipe.scheduler)
                                                                  .init_noise_sigma)
    with torch.no_grad():
        ref = solver.sample(model.denoiser, latents * init, torch.tensor([0, 1]), GUIDANCE)
    assert _rel(out, ref) <= 1e-5

    pipe.scheduler, base = S4SScheduler.from_solver(solver, pipe.scheduler), pipe.scheduler
    try:
        pipe.save_pretrained(tmp_path / "with_s4s")
    finally:
        pipe.scheduler = base
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "with_s4s", **(
        {"text_encoder_3": None, "tokenizer_3": None} if name == "sd3" else {}))
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, S4SScheduler)
    again = loaded(HELD_OUT, latents=latents, guidance_scale=GUIDANCE, num_inference_steps=solver.nfe, height=side,
                   width=side, output_type="latent", **kw, **seq).images
    assert torch.equal(again, out)


def test_learning_and_validation_prompts_are_disjoint(folders):
    model = s4s.load_model(folders["sd"][0], text=TextToImageOptions(tuple(PROMPTS)))
    labels = model.learning_labels(8, 0.25, guided=True)
    assert labels[:6].tolist() == [0, 1, 0, 1, 0, 1] and labels[6:].tolist() == [2, 2]
    with pytest.raises(ValueError, match="at least 2 prompts"):
        s4s.load_model(folders["sd"][0], text=TextToImageOptions(("a cat",))).learning_labels(8, 0.25, True)


def test_cache_keys_separate_prompts_guidance_and_resolution(folders, tmp_path, caplog):
    folder = folders["sd"][0]

    def key(prompts, guidance, side):
        model = s4s.load_model(folder, text=TextToImageOptions(tuple(prompts), height=side, width=side))
        make_teacher_data(model.denoiser, model.schedule, model.sample_shape, num_samples=2, teacher="ddim:2",
                          labels=model.labels(2), guidance=guidance, cache_dir=tmp_path / "teacher", progress=False)
        return sorted(p.name for p in (tmp_path / "teacher").iterdir())

    first = key(PROMPTS, 2.0, 8)
    assert len(key(PROMPTS, 2.0, 8)) == 1  # the same request: the same entry
    assert len(key(["a fox", "a dog", "an owl"], 2.0, 8)) == 2
    assert len(key(PROMPTS, 3.0, 8)) == 3
    assert len(key(PROMPTS, 2.0, 16)) == 4
    assert first[0] in key(PROMPTS, 2.0, 8)
    with caplog.at_level(logging.INFO, logger="s4s"):  # the embeddings come from the cache: no text encoders loaded
        model = s4s.load_model(folder, text=TextToImageOptions(tuple(PROMPTS)))
    assert "prompt embeddings from the cache" in caplog.text
    assert model.pipeline.text_encoder is None and model.pipeline.tokenizer is None
    fresh = s4s.load_model(folder, text=TextToImageOptions(tuple(PROMPTS)), cache=False)
    assert fresh.denoiser.condition_digest == model.denoiser.condition_digest


@pytest.mark.parametrize("suffix,text,expected", [
    (".txt", "a cat\n\n  a dog  \n", ["a cat", "a dog"]),
    (".csv", "image_id,caption\n1,a cat\n2,\"a dog, running\"\n", ["a cat", "a dog, running"]),
    (".jsonl", '{"image_id": 1, "caption": "a cat"}\n\n{"image_id": 2, "caption": "a dog"}\n', ["a cat", "a dog"]),
])
def test_prompt_files(tmp_path, suffix, text, expected):
    path = tmp_path / f"p{suffix}"
    path.write_text(text)
    assert read_prompts(path) == expected


@pytest.mark.parametrize("suffix,content,message", [
    (".txt", b"\n \n", "no prompts"),
    (".txt", b"a cat\n\xff\xfe dog\n", "not UTF-8"),
    (".csv", b"image_id,text_of_it\n1,a cat\n", "no caption column"),
    (".jsonl", b'{"id": 1, "caption": "a cat"}\n{"id": 2}\n', "no 'caption' field"),
])
def test_bad_prompt_files_fail_with_one_line(folders, tmp_path, caplog, capsys, suffix, content, message):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with caplog.at_level(logging.ERROR, logger="s4s"):
        code = main(["learn", "--model", str(folders["sd"][0]), "--prompts", str(path), "--nfe", "3", "--out",
                     str(tmp_path / "s.json"), "--device", "cpu"])
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert code == 2 and len(errors) == 1 and message in errors[0].getMessage() and str(path) in errors[0].getMessage()
    assert "Traceback" not in caplog.text + capsys.readouterr().err


def test_what_a_text_to_image_folder_refuses(folders, prompt_file, tmp_path):
    flux = folders["flux"][0]
    with pytest.raises(ValueError, match="give prompts"):
        s4s.load_model(flux)
    with pytest.raises(ValueError, match="no unconditional branch"):
        s4s.load_model(flux, text=TextToImageOptions(tuple(PROMPTS), "blurry"))
    model = s4s.load_model(flux, text=TextToImageOptions(tuple(PROMPTS), height=16, width=16, max_sequence_length=8))
    with pytest.raises(ValueError, match="pass --guidance W"):
        s4s.learn(model, nfe=3, preset="fast", steps=1, num_samples=4, cache=False)
    with pytest.raises(ValueError, match="multiple of 2"):
        s4s.load_model(flux, text=TextToImageOptions(tuple(PROMPTS), height=15))
    schnell = tiny_flux(tmp_path / "tok", guidance_embeds=False)
    schnell.save_pretrained(tmp_path / "schnell")
    model = s4s.load_model(tmp_path / "schnell", text=TextToImageOptions(tuple(PROMPTS), height=16, width=16,
                                                                          max_sequence_length=8))
    with pytest.raises(ValueError, match="samples unguided"):
        model.check_guidance(3.5)
    other = tmp_path / "kandinsky"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline", "unet": ["diffusers", "x"]}))
    with pytest.raises(ValueError, match="--prompts is for text-to-image pipeline folders"):
        s4s.load_model(other, text=TextToImageOptions(tuple(PROMPTS)))
    (other / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline", "transformer": [1, 2]}))
    with pytest.raises(ValueError, match="StableDiffusionXLPipeline, StableDiffusion3Pipeline, FluxPipeline"):
        s4s.load_model(other)


def test_eval_on_held_out_prompts_with_clip_score(folders, prompt_file, tmp_path, capsys, caplog):
    from torchmetrics.functional.multimodal import clip_score

    from s4s.eval.clip_score import ClipScorer, to_uint8

    folder = folders["sd"][0]
    solver = tmp_path / "sd.json"
    _learn_cli(folder, prompt_file, solver, 8, [])
    capsys.readouterr()
    clip = tiny_clip(tmp_path / "clip")
    with caplog.at_level(logging.ERROR, logger="s4s"):
        assert main(["eval", "--model", str(folder), "--prompts", str(prompt_file), "--solver", str(solver),
                     "--metrics", "teacher", "--num-samples", "4", "--device", "cpu"]) == 2
    assert "3 of the 3 evaluation prompts were used to learn" in caplog.text
    held_out = tmp_path / "eval.txt"
    held_out.write_text("\n".join(HELD_OUT))
    grid = tmp_path / "grid.png"
    assert main(["eval", "--model", str(folder), "--prompts", str(held_out), "--solver", str(solver), "--metrics",
                 "teacher,clip", "--clip-model", str(clip), "--teacher", "unipc_bh2:8", "--num-samples", "4",
                 "--save-images", str(grid), "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["guidance"] == GUIDANCE and result["teacher_rmse"] > 0 and 0 < result["teacher_rmse_pixels"] < 2
    assert grid.is_file() and grid.with_suffix(".prompts.txt").read_text().splitlines()[1] == "row 1, column 2: a bee"

    model = s4s.load_model(folder, text=TextToImageOptions(tuple(HELD_OUT)))
    x_T = sample_noise(model.schedule, 4, model.sample_shape, 0)
    with torch.no_grad():
        images = model.decode(s4s.Solver.load(solver).sample(model.denoiser, x_T, model.labels(4), GUIDANCE))
    scorer = ClipScorer(clip)
    prompts = [HELD_OUT[k % 2] for k in range(4)]
    assert result["clip_score"] == pytest.approx(float(scorer.score(images, prompts).mean()), rel=1e-5)

    class Features(torch.nn.Module):  # transformers 5 returns model outputs where torchmetrics expects tensors
        def __init__(self, m):
            super().__init__()
            self.m, self.config = m, m.config

        def get_image_features(self, *a, **kw):
            return self.m.get_image_features(*a, **kw).pooler_output

        def get_text_features(self, *a, **kw):
            return self.m.get_text_features(*a, **kw).pooler_output

    for k in range(4):  # torchmetrics' CLIP score, one image at a time (it averages over the batch)
        ref = clip_score(to_uint8(images[k:k + 1]), prompts[k:k + 1],
                         model_name_or_path=lambda: (Features(scorer.model), scorer.processor))
        assert float(scorer.score(images[k:k + 1], prompts[k:k + 1])) == pytest.approx(float(ref), rel=1e-5)


def test_text_options_without_prompts_are_refused(folders, tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="s4s"):
        assert main(["learn", "--model", str(folders["sd"][0]), "--nfe", "3", "--height", "16", "--out",
                     str(tmp_path / "s.json"), "--device", "cpu"]) == 2
        assert main(["learn", "--model", str(folders["sd"][0]), "--nfe", "3", "--out", str(tmp_path / "s.json"),
                     "--device", "cpu"]) == 2
        assert main(["learn", "--nfe", "3", "--prompts", str(tmp_path / "none.txt"), "--out", str(tmp_path / "s.json"),
                     "--device", "cpu"]) == 2
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "--height need --prompts" in messages[0]
    assert "is a text-to-image pipeline (StableDiffusionPipeline): give prompts" in messages[1]
    assert "cannot read the prompt file" in messages[2]
    assert not (tmp_path / "s.json").exists()
