"""Which family a model folder is: by model_index.json, and by name for distilled variants that
keep their base model's model_index.json (FastHunyuan)."""

import pytest

from sglang_diffusion.config.families import FAMILIES, detect_family


@pytest.mark.parametrize("where", [
    "/root/.cache/huggingface/hub/models--FastVideo--FastHunyuan-diffusers/snapshots/0123abcd",
    "/data/FastHunyuan-diffusers",
    "FastVideo/FastHunyuan-diffusers",
])
def test_fasthunyuan_is_told_from_hunyuanvideo_by_its_name(where):
    family = detect_family("HunyuanVideoPipeline", {}, where)
    assert family is FAMILIES["fasthunyuan"]
    assert family.defaults["num_inference_steps"] == 6 and family.is_video


def test_other_hunyuanvideo_folders_keep_the_base_family():
    assert detect_family("HunyuanVideoPipeline", {}, "/data/HunyuanVideo") is FAMILIES["hunyuanvideo"]
    assert detect_family("HunyuanVideoPipeline", {}) is FAMILIES["hunyuanvideo"]
    # the name alone does not make another pipeline class FastHunyuan
    assert detect_family("WanPipeline", {}, "/data/FastHunyuan-like-wan") is FAMILIES["wan2.1-t2v"]


def test_native_pipeline_of_a_fasthunyuan_folder_runs_with_its_defaults(tiny_model, tmp_path):
    import shutil

    from sglang_diffusion.config.server_args import ServerArgs
    from sglang_diffusion.pipelines.registry import build_pipeline
    from sglang_diffusion.platform import Platform

    folder = tmp_path / "FastHunyuan-diffusers"
    shutil.copytree(tiny_model("hunyuanvideo"), folder)
    pipeline = build_pipeline(ServerArgs(model_path=str(folder)), Platform.current())
    assert pipeline.describe()["backend"] == "sglang" and pipeline.describe()["family"] == "fasthunyuan"
