"""The math of diffusion: schedules, the forward process, parameterizations and losses."""
from noisecraft.diffusion.forward import expand, posterior_between, q_posterior, q_sample, q_step
from noisecraft.diffusion.losses import diffusion_loss, min_snr_weight
from noisecraft.diffusion.param import PREDICTIONS, check_prediction, eps_from_x0, target, to_x0_eps, x0_from_eps
from noisecraft.diffusion.schedule import NoiseSchedule, ScheduleConfig

__all__ = [
    "NoiseSchedule", "ScheduleConfig", "q_sample", "q_step", "q_posterior", "posterior_between", "expand",
    "PREDICTIONS", "check_prediction", "to_x0_eps", "x0_from_eps", "eps_from_x0", "target",
    "diffusion_loss", "min_snr_weight",
]
