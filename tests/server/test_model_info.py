"""/model_info reports the precisions the model runs in, not what was asked (or nothing)."""

import requests


def test_model_info_reports_the_precisions_the_model_runs_in(flux_server):
    info = requests.get(flux_server.url + "/model_info", timeout=30).json()
    # the diffusers backend's FLUX on a CPU: fp32 unless bf16 is measured faster here (precision policy)
    assert info["dit_precision"] in ("fp32", "bf16") and info["vae_precision"] == "fp32", info
