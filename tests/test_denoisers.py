import pytest
import torch

import s4s


@pytest.mark.parametrize("schedule", [s4s.VPDiscrete(), s4s.VPCosine(), s4s.EDM(), s4s.Flow()], ids=repr)
def test_eps_x0_v_adapters_agree(schedule, gmm):
    x = torch.randn(12, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t = torch.linspace(schedule.t_max, schedule.t_min, 12, dtype=torch.float64)
    x = x * schedule.sigma(t)[:, None]
    ref = gmm.denoiser(schedule)(x, t)
    for pred, ctor in [("sample", s4s.Denoiser.from_x0), ("epsilon", s4s.Denoiser.from_eps), ("v_prediction", s4s.Denoiser.from_v)]:
        d = ctor(gmm.raw_model(schedule, pred), schedule)(x, t)
        torch.testing.assert_close(d, ref, rtol=1e-9, atol=1e-9, msg=pred)


def test_flow_adapter_matches_vp_after_change_of_variables(gmm):
    """Same data, same noise level: x_flow = x_vp * (alpha_f / alpha_vp) gives the same D."""
    vp, flow = s4s.VPDiscrete(), s4s.Flow()
    t_vp = torch.tensor([900.0, 400.0, 50.0], dtype=torch.float64)
    lam = vp.lam(t_vp)
    t_f = flow.t_from_lambda(lam)
    x_vp = torch.randn(3, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_f = x_vp * (flow.alpha(t_f) / vp.alpha(t_vp))[:, None]
    d_vp = gmm.denoiser(vp)(x_vp, t_vp)
    d_f = s4s.Denoiser.from_flow(gmm.raw_model(flow, "flow_prediction"), flow)(x_f, t_f)
    torch.testing.assert_close(d_f, d_vp, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="Flow schedule"):
        s4s.Denoiser.from_flow(gmm.raw_model(vp, "flow_prediction"), vp)


def test_edm_adapter_on_vp_schedule(gmm):
    vp = s4s.VPDiscrete()
    t = torch.tensor([700.0, 30.0], dtype=torch.float64)
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    calls = []

    def net(xv, sigma, labels):  # EDM contract: VE input, VE noise level, returns D
        calls.append(sigma)
        return gmm.posterior_mean(xv, sigma, labels)

    d = s4s.Denoiser.from_edm(net, vp)(x, t)
    torch.testing.assert_close(d, gmm.denoiser(vp)(x, t))
    torch.testing.assert_close(calls[0], vp.sigma(t) / vp.alpha(t))


def test_classifier_free_guidance_is_one_batched_call(gmm):
    vp = s4s.VPDiscrete()
    inner = gmm.denoiser(vp)
    seen = []

    def counting(x, t, cond):
        seen.append(x.shape[0])
        return inner.fn(x, t, cond)

    den = s4s.Denoiser(counting, vp, null_cond=-1)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 0])
    out = den(x, 500.0, labels, guidance=2.5)
    assert seen == [10]
    d_c, d_u = inner(x, 500.0, labels), inner(x, 500.0, None)
    torch.testing.assert_close(out, d_u + 2.5 * (d_c - d_u))
    torch.testing.assert_close(den(x, 500.0, labels, guidance=1.0), d_c)
    with pytest.raises(ValueError, match="null_cond"):
        s4s.Denoiser(counting, vp)(x, 500.0, labels, guidance=2.0)


def test_from_diffusers_unet_eps_conversion():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=3).eval()
    vp = s4s.VPDiscrete()
    den = s4s.Denoiser.from_diffusers(unet, vp, prediction_type="epsilon", null_cond=2)
    x = torch.randn(2, 1, 8, 8)
    labels = torch.tensor([0, 1])
    with torch.no_grad():
        eps = unet(x, torch.tensor([250.0, 250.0]), class_labels=labels).sample
        d = den(x, 250.0, labels)
    a, s = vp.alpha(torch.tensor(250.0)).float(), vp.sigma(torch.tensor(250.0)).float()
    torch.testing.assert_close(d, (x - s * eps) / a, rtol=1e-5, atol=1e-5)
    assert den.fingerprint == s4s.fingerprint_module(unet) and len(den.fingerprint) == 16
