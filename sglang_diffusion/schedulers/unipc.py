"""UniPC multistep (Zhao et al. 2023) for flow-matching models, as diffusers'
`UniPCMultistepScheduler` runs Wan's configuration: `use_flow_sigmas`, `prediction_type`
"flow_prediction", `predict_x0`, B(h) variants bh1 / bh2, any solver order, lower order on the
final steps, corrector on every step but those in `disable_corrector`.

Why not diffusers' class: importing diffusers costs seconds of start-up, more than a small
model's whole generation. `supports(config)` says whether a scheduler_config.json is within
what this class does; the loader keeps diffusers' class for any other.

Notation (flow matching): at noise level s the sample is x = (1 - s) x0 + s noise, so
alpha = 1 - s, sigma = s, lambda = log(alpha / sigma); the model predicts the velocity v and
x0 = x - s v. Each step, from s0 to the next level t with h = lambda_t - lambda_s0:
- corrector (UniC) of the sample the last predictor gave, with the model's output there;
- predictor (UniP): x_t = (sigma_t / sigma_s0) x - alpha_t (e^-h - 1) m0 - alpha_t B(h) sum_k rho_k D_k,
  with D_k the scaled differences of the previous x0 predictions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from sglang_diffusion.errors import ModelLoadError
from sglang_diffusion.loader.weights import ConfigDict

SCHEDULER_CONFIG = "scheduler_config.json"

# scheduler_config.json keys whose values this class implements (any other value: diffusers' class)
_REQUIRED = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "predict_x0": True,
             "thresholding": False, "use_karras_sigmas": False, "use_exponential_sigmas": False,
             "use_beta_sigmas": False, "use_dynamic_shifting": False, "rescale_betas_zero_snr": False,
             "solver_p": None, "shift_terminal": None}
_DEFAULTS = {"num_train_timesteps": 1000, "solver_order": 2, "solver_type": "bh2", "lower_order_final": True,
             "disable_corrector": [], "flow_shift": 1.0, "final_sigmas_type": "zero",
             "time_shift_type": "exponential", **_REQUIRED}


class StepOutput(NamedTuple):
    """diffusers' SchedulerOutput as the stages read it: `[0]` or `.prev_sample`."""

    prev_sample: torch.Tensor


def supports(config: dict) -> bool:
    """Whether `config` (scheduler_config.json) is a UniPC configuration this class runs as diffusers does."""
    if config.get("_class_name") != "UniPCMultistepScheduler":
        return False
    if any(config.get(key, _DEFAULTS[key]) != value for key, value in _REQUIRED.items()):
        return False
    return (config.get("solver_type", "bh2") in ("bh1", "bh2")
            and config.get("final_sigmas_type", "zero") in ("zero", "sigma_min")
            and config.get("timestep_spacing", "linspace") in ("linspace", "leading", "trailing"))


class UniPCMultistepScheduler:
    """set_timesteps(n) / set_begin_index(0) / timesteps / step(v, t, x, return_dict=False)[0],
    as the denoising stages call diffusers' schedulers."""

    order = 1

    def __init__(self, config: dict):
        self.config = ConfigDict({**_DEFAULTS, **config})
        self.timesteps = torch.empty(0, dtype=torch.int64)
        self.sigmas = torch.empty(0)
        self.num_inference_steps = None
        self._reset()

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> UniPCMultistepScheduler:
        path = Path(folder) / SCHEDULER_CONFIG
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"cannot read {path}: {e}") from None
        if not supports(config):
            raise ModelLoadError(f"{path}: a UniPC configuration the native scheduler does not run")
        return cls(config)

    def register_to_config(self, **values) -> None:
        self.config.update(values)

    def _reset(self) -> None:
        self.model_outputs: list[torch.Tensor | None] = [None] * self.config.solver_order
        self.lower_order_nums = 0
        self.last_sample: torch.Tensor | None = None
        self.this_order = 0
        self.step_index: int | None = None
        self.begin_index: int | None = None

    def set_begin_index(self, begin_index: int = 0) -> None:
        self.begin_index = begin_index

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      sigmas=None, mu=None) -> None:
        """n noise levels from 1 (less 1e-6, where log(sigma) and log(alpha) stay finite) down,
        shifted by flow_shift, then the final one (0, or the last level for "sigma_min")."""
        c = self.config
        if sigmas is None:
            sigmas = np.linspace(1, 1 / c.num_train_timesteps, num_inference_steps + 1)[:-1]
        sigmas = np.asarray(sigmas, dtype=np.float64)
        sigmas = c.flow_shift * sigmas / (1 + (c.flow_shift - 1) * sigmas)
        if abs(sigmas[0] - 1) < 1e-6:
            sigmas[0] -= 1e-6
        timesteps = sigmas * c.num_train_timesteps
        last = sigmas[-1] if c.final_sigmas_type == "sigma_min" else 0
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [last]]).astype(np.float32))
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self._reset()

    def _lambda(self, index: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(alpha, sigma, lambda) at noise level `index`."""
        sigma = self.sigmas[index].to(device)
        alpha = 1 - sigma
        return alpha, sigma, torch.log(alpha) - torch.log(sigma)

    def _coefficients(self, h: torch.Tensor, rks: list[torch.Tensor], order: int, device):
        """(hh, e^hh - 1, B(h), the order's b vector and R matrix) of UniPC's linear system."""
        hh = -h  # predict_x0
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.config.solver_type == "bh1" else torch.expm1(hh)
        r = torch.stack([*rks, torch.ones((), device=device)])
        rows, b, factorial = [], [], 1
        for i in range(1, order + 1):
            rows.append(torch.pow(r, i - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        return h_phi_1, b_h, torch.stack(b), torch.stack(rows)

    def _differences(self, at: int, lambda_s0: torch.Tensor, h: torch.Tensor, order: int, device):
        """rk and D_k = (m_k - m0) / rk for the order - 1 earlier predictions; `at` is the noise
        level of the newest earlier one."""
        m0 = self.model_outputs[-1]
        rks, diffs = [], []
        for i in range(1, order):
            _, _, lambda_si = self._lambda(at - i, device)
            rk = (lambda_si - lambda_s0) / h
            rks.append(rk)
            diffs.append((self.model_outputs[-(i + 1)] - m0) / rk)
        return rks, diffs

    def _predict(self, x: torch.Tensor, order: int) -> torch.Tensor:
        """UniP from the current level to the next."""
        device, i = x.device, self.step_index
        alpha_t, sigma_t, lambda_t = self._lambda(i + 1, device)
        _, sigma_s0, lambda_s0 = self._lambda(i, device)
        h = lambda_t - lambda_s0
        rks, diffs = self._differences(i, lambda_s0, h, order, device)
        h_phi_1, b_h, b, rows = self._coefficients(h, rks, order, device)
        x_t = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * self.model_outputs[-1]
        if diffs:
            rhos = (torch.ones(1, dtype=x.dtype, device=device) * 0.5 if order == 2
                    else torch.linalg.solve(rows[:-1, :-1], b[:-1]).to(device).to(x.dtype))
            x_t = x_t - alpha_t * b_h * torch.einsum("k,bkc...->bc...", rhos, torch.stack(diffs, dim=1))
        return x_t.to(x.dtype)

    def _correct(self, model_t: torch.Tensor, last: torch.Tensor, order: int) -> torch.Tensor:
        """UniC of the sample at the current level, which the last predictor gave from `last`."""
        device, i = last.device, self.step_index
        alpha_t, sigma_t, lambda_t = self._lambda(i, device)
        _, sigma_s0, lambda_s0 = self._lambda(i - 1, device)
        h = lambda_t - lambda_s0
        rks, diffs = self._differences(i - 1, lambda_s0, h, order, device)
        h_phi_1, b_h, b, rows = self._coefficients(h, rks, order, device)
        rhos = (torch.ones(1, dtype=last.dtype, device=device) * 0.5 if order == 1
                else torch.linalg.solve(rows, b).to(device).to(last.dtype))
        m0 = self.model_outputs[-1]
        x_t = sigma_t / sigma_s0 * last - alpha_t * h_phi_1 * m0
        correction = rhos[-1] * (model_t - m0)
        if diffs:
            correction = torch.einsum("k,bkc...->bc...", rhos[:-1], torch.stack(diffs, dim=1)) + correction
        return (x_t - alpha_t * b_h * correction).to(last.dtype)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True) -> StepOutput:
        """One step from the current noise level: `model_output` the velocity at `sample`."""
        if self.num_inference_steps is None:
            raise RuntimeError("set_timesteps must run before step")
        if self.step_index is None:
            self.step_index = self.begin_index if self.begin_index is not None else self._index_of(timestep)
        c = self.config
        x0 = sample - self.sigmas[self.step_index] * model_output  # flow prediction -> x0
        if self.step_index > 0 and self.step_index - 1 not in c.disable_corrector and self.last_sample is not None:
            sample = self._correct(x0, self.last_sample, self.this_order)
        self.model_outputs = [*self.model_outputs[1:], x0]
        order = min(c.solver_order, len(self.timesteps) - self.step_index) if c.lower_order_final else c.solver_order
        self.this_order = min(order, self.lower_order_nums + 1)  # warm-up: one more earlier prediction a step
        self.last_sample = sample
        prev = self._predict(sample, self.this_order)
        self.lower_order_nums = min(self.lower_order_nums + 1, c.solver_order)
        self.step_index += 1
        return StepOutput(prev)

    def _index_of(self, timestep) -> int:
        """diffusers' index_for_timestep: the second match of a repeated timestep, the last step if none."""
        matches = (self.timesteps == torch.as_tensor(timestep).to(self.timesteps.device)).nonzero()
        if len(matches) == 0:
            return len(self.timesteps) - 1
        return int(matches[1 if len(matches) > 1 else 0].item())
