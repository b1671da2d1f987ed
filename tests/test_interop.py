"""diffusers folders run by noisecraft, and noisecraft models exported to diffusers: same numbers both ways."""
import json

import pytest
import torch
from diffusers import (DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler,
                       UNet2DModel)
from safetensors.torch import load_file

from noisecraft import NoisecraftError, load_model, sample
from noisecraft.diffusion import ScheduleConfig
from noisecraft.interop import DiffusersUNet, export_diffusers, schedule_from_diffusers
from noisecraft.models import DiffusionModel, ModelConfig, save_model
from noisecraft.nets import PRESETS, UNetConfig

# As tests/samplers/test_diffusers_equivalence.py: the DDPM betas, trailing grids, x_0 clipping as stated per test.
COMMON = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, timestep_spacing="trailing")
SHAPE = (4, 3, 8, 8)


def small_unet(seed: int = 0) -> UNet2DModel:
    """A randomly initialised diffusers UNet in diffusers' own style (additive time embedding, 2 attention heads)."""
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, attention_head_dim=8)


def small_pipeline(path, scheduler=None):
    """A saved DDIMPipeline folder (unet/, scheduler/, model_index.json) holding small_unet()."""
    DDIMPipeline(unet=small_unet(), scheduler=scheduler or DDIMScheduler(**COMMON, clip_sample=False)).save_pretrained(path)
    return path


def random_noisecraft_model(unet: UNetConfig, seed: int = 0, **config) -> DiffusionModel:
    """Every weight random: the zero-initialised output layers of a fresh UNet would hide a wrong mapping."""
    torch.manual_seed(seed)
    model = DiffusionModel(ModelConfig(unet=unet, **config))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model.eval()


def to_unit(x):
    return (x / 2 + 0.5).clamp(0, 1)


def unsaturated(images) -> float:
    """The share of pixels strictly inside (0, 1): a comparison of saturated images would prove little. A random
    epsilon-predictor's x_0 estimates saturate whatever one does (x_0 = (x_t - sqrt(1 - a) eps) / sqrt(a) with
    eps unrelated to x_t), so its images are compared, clipped, without this check; v and x_0 predictors keep
    their estimates of order 1 and are checked."""
    return float(((images > 0.01) & (images < 0.99)).float().mean())


# ------------------------------------------------------------------ diffusers folder, noisecraft samplers

@pytest.mark.parametrize("prediction, clip", [("epsilon", True), ("v_prediction", False), ("sample", False)])
def test_ddim_on_a_diffusers_folder_matches_ddim_pipeline(tmp_path, prediction, clip):
    path = small_pipeline(tmp_path / "pipe", DDIMScheduler(**COMMON, clip_sample=clip, prediction_type=prediction))
    pipe = DDIMPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(SHAPE[0])]
    # use_clipped_model_output: diffusers recomputes eps from the clipped x_0, as noisecraft's clipping does.
    ref = pipe(batch_size=SHAPE[0], generator=gens(), num_inference_steps=20, output_type="pt",
               use_clipped_model_output=clip).images
    model = load_model(path)
    assert isinstance(model, DiffusersUNet) and model.prediction == prediction
    ours = to_unit(sample(model, SHAPE, sampler="ddim", steps=20, generator=gens(), clip_denoised=clip))
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)
    assert prediction == "epsilon" or unsaturated(ref) > 0.25


def test_dpmpp_2m_on_a_diffusers_folder_matches_dpm_solver(tmp_path):
    scheduler = DPMSolverMultistepScheduler(**COMMON, algorithm_type="dpmsolver++", solver_order=2,
                                            final_sigmas_type="zero", prediction_type="v_prediction")
    path = small_pipeline(tmp_path / "pipe")
    scheduler.save_pretrained(path / "scheduler")          # the folder now holds a DPM-Solver config
    model = load_model(path)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    scheduler.set_timesteps(10)
    x = x_T * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:                        # the diffusers denoising loop
            x = scheduler.step(model.unet(x, t).sample, t, x).prev_sample
    ours = sample(model, SHAPE, sampler="dpmpp_2m", steps=10, x_T=x_T, clip_denoised=False)
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-4)
    assert unsaturated(to_unit(x)) > 0.25


def test_a_bare_unet_folder_takes_its_pipelines_scheduler_or_ddpm_defaults(tmp_path):
    small_pipeline(tmp_path / "pipe", DDIMScheduler(**COMMON, prediction_type="v_prediction"))
    assert load_model(tmp_path / "pipe" / "unet").prediction == "v_prediction"     # ../scheduler/ of its pipeline
    small_unet().save_pretrained(tmp_path / "bare")
    model = load_model(tmp_path / "bare")
    assert model.prediction == "epsilon" and model.schedule.config == ScheduleConfig("linear", 1000, 1e-4, 0.02)
    assert model.config.image_shape == (3, 8, 8) and "DDPMScheduler defaults" in model.config.description
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10.0, 500.0])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), small_unet()(x, t).sample)


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "trained"])
def test_schedules_read_from_scheduler_configs_match_diffusers(beta_schedule):
    kw = dict(beta_schedule=beta_schedule, beta_start=1e-3, beta_end=0.015)
    if beta_schedule == "trained":
        kw = dict(trained_betas=torch.linspace(1e-3, 0.05, 1000).tolist())
    reference = DDPMScheduler(num_train_timesteps=1000, **kw)
    schedule, prediction = schedule_from_diffusers(dict(reference.config), "test")
    torch.testing.assert_close(schedule.alphas_cumprod, reference.alphas_cumprod.double(), rtol=1e-4, atol=0)
    assert prediction == "epsilon"


# ------------------------------------------------------------------ noisecraft model, exported to diffusers

def test_export_maps_the_unet_exactly_onto_unet2dmodel(tmp_path):
    model = random_noisecraft_model(PRESETS["tiny"])
    save_model(tmp_path / "nc", model.config, model.net.state_dict())
    out = export_diffusers(tmp_path / "nc", tmp_path / "out")
    config = json.loads((out / "unet" / "config.json").read_text())
    weights = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert set(weights) == set(UNet2DModel.from_config(config).state_dict())      # nothing missing, nothing extra
    unet = UNet2DModel.from_pretrained(out / "unet").eval()
    x, t = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([0.0, 17.5, 999.0])
    with torch.no_grad():
        ours = model(x, t)
        torch.testing.assert_close(unet(x, t).sample, ours, rtol=0, atol=1e-4)
        torch.testing.assert_close(load_model(out)(x, t), ours, rtol=0, atol=1e-4)    # and back into noisecraft
    assert ours.abs().mean() > 0.1
    assert isinstance(DDPMPipeline.from_pretrained(out).scheduler, DDPMScheduler)


@pytest.mark.parametrize("kind, prediction", [("linear", "epsilon"), ("cosine", "v_prediction")])
def test_exported_model_samples_the_same_in_diffusers(tmp_path, kind, prediction):
    unet = UNetConfig(image_size=8, in_channels=1, base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=2,
                      attn_resolutions=(4,), head_dim=8, groups=4)
    model = random_noisecraft_model(unet, schedule=ScheduleConfig(kind=kind), prediction=prediction)
    save_model(tmp_path / "nc", model.config, model.net.state_dict())
    out = export_diffusers(tmp_path / "nc", tmp_path / "out")
    pipe = DDIMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(4)]
    ref = pipe(batch_size=4, generator=gens(), num_inference_steps=10, output_type="pt", use_clipped_model_output=True).images
    ours = to_unit(sample(load_model(tmp_path / "nc"), (4, 1, 8, 8), sampler="ddim", steps=10, generator=gens()))
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)
    assert prediction == "epsilon" or unsaturated(ref) > 0.25


# ------------------------------------------------------------------ errors: one line naming what was found

def _edit_json(path, **changes):
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


LOAD_ERRORS = {
    "neither format": (lambda p: (p / "notes.txt").write_text("hi"), "notes.txt"),
    "cross-attention block": (lambda p: _edit_json(p / "unet" / "config.json", down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"]),
                              "unsupported block type 'CrossAttnDownBlock2D'"),
    "conditional unet class": (lambda p: _edit_json(p / "unet" / "config.json", _class_name="UNet2DConditionModel"),
                               "UNet2DConditionModel"),
    "latent pipeline": (lambda p: _edit_json(p / "model_index.json", vqvae=["diffusers", "VQModel"]), "vqvae"),
    "fourier embedding": (lambda p: _edit_json(p / "unet" / "config.json", time_embedding_type="fourier"), "fourier"),
    "ve scheduler": (lambda p: (p / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "ScoreSdeVeScheduler", "sigma_min": 0.01})), "ScoreSdeVeScheduler"),
    "learned variance": (lambda p: _edit_json(p / "unet" / "config.json", out_channels=6), "out_channels 6"),
    "latent channels": (lambda p: _edit_json(p / "unet" / "config.json", in_channels=4, out_channels=4), "in_channels is 4"),
    "missing weights": (lambda p: (p / "unet" / "diffusion_pytorch_model.safetensors").unlink(),
                        "no diffusion_pytorch_model.safetensors"),
    "truncated weights": (lambda p: (p / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64),
                          "diffusers could not load"),
}


@pytest.mark.parametrize("case", sorted(LOAD_ERRORS))
def test_unsupported_folders_are_one_line_errors_naming_what_was_found(tmp_path, case):
    make, match = LOAD_ERRORS[case]
    path = tmp_path / "m"
    if case == "neither format":
        path.mkdir()
    else:
        small_pipeline(path)
    make(path)
    with pytest.raises(NoisecraftError, match=match) as e:
        load_model(path)
    assert "\n" not in str(e.value)


def test_a_hub_name_without_a_local_folder_says_nothing_is_downloaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NoisecraftError, match="'google/ddpm-cifar10-32': no such folder.*not downloaded"):
        load_model("google/ddpm-cifar10-32")


NO_COUNTERPART = {
    "text-conditional": dict(unet=UNetConfig(image_size=8, base_channels=8, channel_mult=(1, 2), context_dim=384,
                                             groups=4, head_dim=8), cond="text", text_encoder="minilm", guidance=3.0),
    "super-resolution": dict(unet=UNetConfig(image_size=8, base_channels=8, channel_mult=(1, 2), low_res_channels=1,
                                             groups=4, head_dim=8), cond="superres", sr_factor=2),
    "wide first level": dict(unet=UNetConfig(image_size=8, base_channels=8, channel_mult=(2, 2), groups=4, head_dim=8)),
    "uneven groups": dict(unet=UNetConfig(image_size=8, base_channels=12, channel_mult=(1, 2), groups=8, head_dim=12)),
}


@pytest.mark.parametrize("case", sorted(NO_COUNTERPART))
def test_what_has_no_unet2dmodel_exports_as_custom_components_and_comes_back(tmp_path, case):
    model = random_noisecraft_model(**NO_COUNTERPART[case])
    save_model(tmp_path / "nc", model.config, model.net.state_dict())
    out = export_diffusers(tmp_path / "nc", tmp_path / "out")
    assert json.loads((out / "model_index.json").read_text())["unet"] == ["modeling_noisecraft", "NoisecraftUNet"]
    assert (out / "pipeline.py").read_bytes() == (out / "unet" / "modeling_noisecraft.py").read_bytes()
    back = load_model(out)                                                       # without diffusers
    x, t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([5.0, 700.0])
    cond = {"low_res": torch.randn(2, 1, 4, 4)} if case == "super-resolution" else \
        {"context": torch.randn(2, 3, 384), "context_mask": torch.ones(2, 3)} if case == "text-conditional" else {}
    with torch.no_grad():
        assert torch.equal(back(x, t, **cond), model(x, t, **cond))
    assert back.config == model.config


def _custom_pipeline(out):
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(out, custom_pipeline=str(out), trust_remote_code=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("case", ["text-conditional", "super-resolution", "wide first level"])
def test_custom_component_pipeline_samples_as_noisecraft_does(tmp_path, case):
    from noisecraft.guidance import condition
    model = random_noisecraft_model(**NO_COUNTERPART[case], prediction="v_prediction")     # unsaturated images
    save_model(tmp_path / "nc", model.config, model.net.state_dict())
    pipe = _custom_pipeline(export_diffusers(tmp_path / "nc", tmp_path / "out"))
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(3)]
    ours_model = load_model(tmp_path / "nc")
    kw, cond, g, negative = {}, {}, 1.0, None
    if case == "text-conditional":
        c = condition(ours_model, 3, prompt="a red circle", negative_prompt="a square")
        kw, cond, g, negative = dict(prompt="a red circle", negative_prompt="a square"), c.cond, 3.0, c.negative
    elif case == "super-resolution":
        y = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(9)) * 2 - 1
        kw, cond = dict(low_res=y), {"low_res": y}
    ref = pipe(batch_size=3, generator=gens(), num_inference_steps=8, output_type="pt", use_clipped_model_output=True,
               **kw).images
    ours = to_unit(sample(ours_model, (3, 1, 8, 8), sampler="ddim", steps=8, generator=gens(), cond=cond,
                          guidance_scale=g, negative_cond=negative))
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)
    assert unsaturated(ref) > 0.25


def test_export_never_overwrites_and_leaves_nothing_behind(tmp_path):
    model = random_noisecraft_model(UNetConfig(image_size=8, base_channels=8, channel_mult=(1, 2), groups=4, head_dim=8))
    save_model(tmp_path / "nc", model.config, model.net.state_dict())
    (tmp_path / "empty").mkdir()
    export_diffusers(tmp_path / "nc", tmp_path / "empty")                      # an empty folder is filled
    assert (tmp_path / "empty" / "unet" / "config.json").is_file()
    before = (tmp_path / "empty" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    with pytest.raises(NoisecraftError, match="not an empty folder"):
        export_diffusers(tmp_path / "nc", tmp_path / "empty")
    assert (tmp_path / "empty" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == before
    with pytest.raises(NoisecraftError, match="already a diffusers folder"):
        export_diffusers(tmp_path / "empty", tmp_path / "again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "nc"]


# ------------------------------------------------------------------ class-conditional, both ways

CLASS_UNET = UNetConfig(image_size=8, in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                        attn_resolutions=(4,), head_dim=8, groups=4, num_classes=3)


def exported_class_model(tmp_path):
    model = random_noisecraft_model(CLASS_UNET, cond="class", class_names=["cat", "dog", "owl"], guidance=2.5)
    save_model(tmp_path / "nc", model.config, model.net.state_dict())
    return model, export_diffusers(tmp_path / "nc", tmp_path / "out")


def test_class_conditional_export_maps_the_class_embedding_and_comes_back_with_its_names(tmp_path):
    model, out = exported_class_model(tmp_path)
    assert json.loads((out / "unet" / "config.json").read_text())["num_class_embeds"] == 4      # 3 + "no class"
    assert (out / "pipeline.py").read_text().startswith('"""A diffusers pipeline for class-conditional')
    unet = UNet2DModel.from_pretrained(out / "unet").eval()
    back = load_model(out)
    x, t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([3.0, 50.5, 400.0, 999.0])
    labels = torch.tensor([0, 1, 2, 3])                                                     # 3: no class
    with torch.no_grad():
        ours = model(x, t, class_labels=labels)
        torch.testing.assert_close(unet(x, t, class_labels=labels).sample, ours, rtol=0, atol=1e-4)
        torch.testing.assert_close(back(x, t, class_labels=labels), ours, rtol=0, atol=1e-4)
        torch.testing.assert_close(back(x, t), model(x, t), rtol=0, atol=1e-4)             # no class: the null row
    assert back.config.class_names == ["cat", "dog", "owl"] and back.config.guidance == 2.5
    assert back.config.unet.num_classes == 3 and back.null_cond({"class_labels": labels})["class_labels"].eq(3).all()


def test_custom_pipeline_samples_with_guidance_as_noisecraft_does(tmp_path):
    from diffusers import DiffusionPipeline
    model, out = exported_class_model(tmp_path)
    pipe = DiffusionPipeline.from_pretrained(out, custom_pipeline=str(out), trust_remote_code=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(4)]
    labels = torch.tensor([0, 1, 2, 1])
    ref = pipe(class_labels=labels, guidance_scale=2.5, generator=gens(), num_inference_steps=10, output_type="pt",
               use_clipped_model_output=True).images
    ours = to_unit(sample(load_model(tmp_path / "nc"), (4, 1, 8, 8), sampler="ddim", steps=10, generator=gens(),
                          cond={"class_labels": labels}, guidance_scale=2.5))
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)
    unguided = pipe(class_labels=labels, generator=gens(), num_inference_steps=10, output_type="pt",
                    use_clipped_model_output=True).images
    assert (unguided - ref).abs().max() > 1e-2                                              # guidance did something


def test_a_foreign_class_conditional_unet_takes_classes_but_no_guidance(tmp_path):
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, attention_head_dim=8, num_class_embeds=5)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**COMMON)).save_pretrained(tmp_path / "pipe")
    model = load_model(tmp_path / "pipe")
    assert model.config.cond == "class" and model.config.unet.num_classes == 5 and model.config.guidance == 1.0
    x = sample(model, (2, 1, 8, 8), sampler="ddim", steps=3, cond={"class_labels": torch.tensor([4, 0])},
               generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 8, 8)
    with pytest.raises(NoisecraftError, match="no unconditional mode"):
        sample(model, (2, 1, 8, 8), steps=3, cond={"class_labels": torch.tensor([4, 0])}, guidance_scale=2.0)
    with pytest.raises(NoisecraftError, match="give a class"):
        sample(model, (2, 1, 8, 8), steps=3)
