"""examples/pretrain.py runs end to end on CPU at tiny sizes: a few steps, a finite loss, the
k-NN accuracy printed; and once under torchrun with two gloo processes."""
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "pretrain.py"
TINY = ["--steps", "3", "--num-images", "96", "--batch-size", "16", "--image-size", "16",
        "--width", "8", "--threads", "1", "--log-every", "1", "--knn-k", "5"]


def _fused_augment_available():
    try:
        from jem_fast.augment import functional  # noqa: F401
    except (ImportError, AttributeError):
        return False
    return True


def _env():
    env = dict(os.environ)
    # The example imports jem_fast like user code does; from a checkout that is this tree.
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _run(cmd, timeout):
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _check_output(out, steps):
    m = re.search(r"final loss (\S+) after (\d+) steps", out)
    assert m, out
    assert math.isfinite(float(m.group(1))), out
    assert int(m.group(2)) == steps
    m = re.search(r"k-NN top-1: ([\d.]+)%", out)
    assert m, out
    assert 0.0 <= float(m.group(1)) <= 100.0


AUGMENT = ["torch", pytest.param("jem_fast", marks=pytest.mark.skipif(
    not _fused_augment_available(),
    reason="jem_fast.augment.functional (the fused augmentation kernel) is not in this build"))]


@pytest.fixture
def example(monkeypatch):
    """The example's main(argv), run in this process (no torch import per run); the thread
    count it sets is restored afterwards."""
    import importlib.util

    import torch
    threads = torch.get_num_threads()
    spec = importlib.util.spec_from_file_location("pretrain_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module.main
    torch.set_num_threads(threads)


@pytest.mark.parametrize("augment", AUGMENT)
@pytest.mark.parametrize("method", ["simclr", "dino"])
def test_example_runs_as_a_script(method, augment):
    out = _run([sys.executable, str(EXAMPLE), "--method", method, "--augment", augment,
                "--device", "cpu", *TINY], timeout=240)
    _check_output(out, steps=3)
    assert f"augment={augment}" in out


@pytest.mark.parametrize("method", ["moco", "byol", "simsiam", "barlow", "vicreg", "swav"])
def test_every_other_method_runs(method, example, capsys):
    augment = "jem_fast" if _fused_augment_available() else "torch"
    example(["--method", method, "--augment", augment, "--device", "cpu", *TINY[:1], "2",
             *TINY[2:]])
    _check_output(capsys.readouterr().out, steps=2)


def test_example_reads_an_image_folder(tmp_path):
    # ImageFolder input needs a decoder (torchvision or PIL) and a writer for the fixture.
    try:
        from PIL import Image
    except ImportError:
        pytest.skip("Pillow is not installed (needed to write the test images)")
    import numpy as np
    rng = np.random.default_rng(0)
    for c, colour in enumerate(((255, 0, 0), (0, 0, 255))):
        (tmp_path / f"class{c}").mkdir()
        for i in range(12):
            arr = (rng.random((20 + i, 24, 3)) * 60).astype("uint8") + np.array(colour,
                                                                             dtype="uint8") // 2
            Image.fromarray(arr).save(tmp_path / f"class{c}" / f"{i}.png")
    out = _run([sys.executable, str(EXAMPLE), "--method", "vicreg", "--augment", "torch",
                "--data", str(tmp_path), "--device", "cpu", *TINY[:1], "2", *TINY[2:]],
               timeout=240)
    _check_output(out, steps=2)
    assert "2 classes" in out


def test_image_folder_without_a_decoder_is_a_clear_error(tmp_path):
    try:
        import PIL  # noqa: F401
        pytest.skip("Pillow is installed: the decoder exists")
    except ImportError:
        pass
    try:
        import torchvision  # noqa: F401
        pytest.skip("torchvision is installed: the decoder exists")
    except ImportError:
        pass
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"not decoded")
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--method", "simclr", "--data",
                           str(tmp_path), "--device", "cpu"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "install torchvision or Pillow" in proc.stderr


def test_bad_arguments():
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--method", "mae"], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--method", "simclr", "--data",
                           str(ROOT / "no_such_dir")], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "not a directory" in proc.stderr


@pytest.mark.distributed
def test_example_under_torchrun_gloo():
    augment = "jem_fast" if _fused_augment_available() else "torch"
    out = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--standalone", str(EXAMPLE), "--method", "vicreg",
                "--augment", augment, "--device", "cpu", *TINY], timeout=240)
    _check_output(out, steps=3)
    assert "x 2" in out  # two processes, one log (rank 0)
