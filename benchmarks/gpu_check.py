"""GPU check: CUDA against the CPU on the same bundle and buffer, server time per frame, training steps per second.

Written to run as it is on a lent GPU machine, in under 5 minutes: any Python >= 3.10 with a CUDA torch and numpy
(1.x or 2.x), run from a checkout -- no install (the ``rerender`` package is assembled from the source folders by a
path shim, as setup.py maps them), no pyzmq and no msgpack needed (without them the served path is measured in
process, from the wire arrays, and the socket round trip is skipped). Wheels placed in ``--wheels DIR`` are
unpacked and used if present. One JSON is written (after every section, so a timeout keeps what was measured):

  correctness  the same weights on CUDA and on the CPU, one buffer of a size that is not a multiple of 64:
               rerenderer output (fp32 with and without TF32, bf16), encoder latents, S's labels, the device
               encoding against the CPU's, and the served path (uint8 and float16 output)
  server       ms per frame at 512² and 1080p through ModelRuntime.rerender_wire (the server's entry): batch 1,
               batch 8, and pipelined (two threads: frame k+1's decode and upload run while k computes), with the
               decode / encode / forward / output breakdown; channels_last off and torch.compile as variants
  training     steps/s at paper size (256² crops of 512² views, batch 8) for stages 2, 3 and S

    python3 benchmarks/gpu_check.py --out /tmp/gpu_check              # on the GPU machine
    .venv/bin/python benchmarks/gpu_check.py --smoke --out /tmp/gc    # tiny sizes on the CPU (CI runs this)
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import os
import sys
import tempfile
import threading
import time
import traceback
import types
import warnings
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"bridge": "bridge", "backend": "backend", "training": "training"}  # setup.py's, minus the add-on


# ------------------------------------------------------------------------------------------------ bootstrap
class _Absent(types.ModuleType):
    """Stands in for an optional package that is not installed: importable, unusable."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Unavailable


class _Unavailable:
    def __init__(self, *args, **kwargs) -> None:
        raise RuntimeError("this needs pyzmq/msgpack, which are not installed here")


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``_Absent`` modules for the given top-level packages (and their submodules)."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _Absent(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module) -> None:
        pass


class _Hide(importlib.abc.MetaPathFinder):
    """Makes installed packages unimportable (``--pretend-missing``: the test of the machine without them)."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ImportError(f"{fullname} hidden by --pretend-missing")
        return None


def _pytest_stand_in() -> types.ModuleType:
    """Enough of pytest for a test-support module to import: decorators that return what they decorate."""
    module = types.ModuleType("pytest")
    module.__spec__ = importlib.machinery.ModuleSpec("pytest", None)  # torch._dynamo looks modules up by spec

    def fixture(*args, **kwargs):
        return args[0] if args and callable(args[0]) else (lambda f: f)

    module.fixture = fixture  # type: ignore[attr-defined]
    return module


def _tqdm_stand_in() -> types.ModuleType:
    """A silent progress bar with tqdm's interface (the trainer opens one even with progress off)."""
    module = types.ModuleType("tqdm")
    module.__spec__ = importlib.machinery.ModuleSpec("tqdm", None)

    class tqdm:  # noqa: N801 - tqdm's name
        def __init__(self, iterable=None, *args, **kwargs) -> None:
            self.iterable = iterable

        def __iter__(self):
            return iter(self.iterable or ())

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def update(self, *args, **kwargs) -> None:
            pass

        def set_postfix(self, *args, **kwargs) -> None:
            pass

        def close(self) -> None:
            pass

    module.tqdm = tqdm  # type: ignore[attr-defined]
    return module


def bootstrap(force_shim: bool, wheels: Path | None, pretend_missing: set[str]) -> dict:
    """Make ``import rerender`` work from this checkout, with stand-ins for missing optional packages."""
    info: dict = {}
    if pretend_missing:
        sys.meta_path.insert(0, _Hide(pretend_missing))
    if wheels and wheels.is_dir():
        target = Path(tempfile.mkdtemp(prefix="rr_wheels"))
        for wheel in sorted(wheels.glob("*.whl")):
            zipfile.ZipFile(wheel).extractall(target)
        sys.path.insert(0, str(target))
        info["wheels"] = sorted(w.name for w in wheels.glob("*.whl"))
    try:
        if force_shim:
            raise ImportError("--force-shim")
        import rerender  # noqa: F401  (an installed or editable checkout)
        info["import"] = "installed"
    except ImportError:
        shim = Path(tempfile.mkdtemp(prefix="rr_shim")) / "rerender"
        shim.mkdir()
        for f in (ROOT / "cli").glob("*.py"):
            (shim / f.name).symlink_to(f)
        for name, folder in FOLDERS.items():
            (shim / name).symlink_to(ROOT / folder, target_is_directory=True)
        sys.path.insert(0, str(shim.parent))
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()
                            and "editable" not in type(f).__name__.lower()]
        for name in [m for m in sys.modules if m == "rerender" or m.startswith("rerender.")]:
            del sys.modules[name]
        info["import"] = f"path shim {shim}"
    missing = set()
    for name in ("zmq", "msgpack", "safetensors"):  # only the socket path and bundle files use these
        try:
            __import__(name)
        except ImportError:
            missing.add(name)
    if missing:
        sys.meta_path.insert(0, _StubFinder(missing))
    for name, stand_in in (("pytest", _pytest_stand_in), ("tqdm", _tqdm_stand_in)):  # used, but not for results
        try:
            __import__(name)
        except ImportError:
            missing.add(name)
            sys.modules[name] = stand_in()
    try:
        import PIL  # noqa: F401  (the training views are PNGs: the training section needs Pillow)
    except ImportError:
        missing.add("PIL (training section needs it: put a Pillow wheel in --wheels)")
    info["missing"] = sorted(missing)
    sys.path.insert(0, str(ROOT / "tests"))  # support_dataset: the procedural training views
    os.environ.setdefault("RERENDER_VGG_DOWNLOAD", "0")  # no network there: random VGG weights cost the same
    return info


# ------------------------------------------------------------------------------------------------ the check
def median(values: list[float]) -> float:
    v = sorted(values)
    return round((v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2, 3)


class Check:
    def __init__(self, args: argparse.Namespace, env: dict) -> None:
        import numpy as np
        import torch

        self.np, self.torch, self.args = np, torch, args
        self.t0 = time.time()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.cuda = torch.cuda.is_available() and not args.cpu
        self.dev = "cuda" if self.cuda else "cpu"
        self.smoke = args.smoke
        if self.smoke:  # tiny networks: one thread is faster, and a shared CI machine is not oversubscribed
            torch.set_num_threads(1)
        self.r: dict = {"env": {**env, "torch": torch.__version__, "numpy": np.__version__,
                                "python": sys.version.split()[0], "device": self.dev,
                                "gpu": torch.cuda.get_device_name(0) if self.cuda else None, "smoke": self.smoke,
                                "threads": torch.get_num_threads()}}
        from rerender.backend.bundle import Bundle, BundleConfig, build_networks
        self.net = dict(base_channels=8, depth=3, max_channels=32, encoder_channels=8, encoder_blocks=2) \
            if self.smoke else {}
        self.cfg = BundleConfig(name="gpu-check", **self.net)
        self._bundle = lambda: Bundle(self.cfg, *build_networks(self.cfg))

    # -- helpers
    def left(self) -> float:
        return self.args.budget_s - (time.time() - self.t0)

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def save(self) -> None:
        self.r["elapsed_s"] = round(time.time() - self.t0, 1)
        (self.out / "gpu_check.json").write_text(json.dumps(self.r, indent=1))

    def timed(self, fn, n: int, warm: int = 1) -> float:
        for _ in range(warm):
            fn()
        self.sync()
        samples = []
        for _ in range(n):
            a = time.perf_counter()
            fn()
            self.sync()
            samples.append((time.perf_counter() - a) * 1000)
        return median(samples)

    def runtime(self, device: str):
        from rerender.backend.runtime import ModelRuntime
        self.torch.manual_seed(0)  # the same weights on both devices
        return ModelRuntime(self._bundle(), device)

    def buffer(self, h: int, w: int, seed: int):
        from rerender.bridge.buffers import DeepBuffer
        np = self.np
        rng = np.random.default_rng(seed)
        k = rng.random((h, w)) < 0.7
        return DeepBuffer(np.where(k[..., None], rng.random((h, w, 3)), 0).astype(np.float16),
                          np.where(k, rng.uniform(1, 80, (h, w)), np.inf).astype(np.float32),
                          np.where(k, rng.integers(0, 19, (h, w)), 255).astype(np.uint8), k)

    def section(self, fn) -> None:
        if self.left() < 10:
            self.r.setdefault("skipped", []).append(fn.__name__)
            return
        started = time.time()
        try:
            fn()
        except Exception:
            self.r.setdefault("errors", {})[fn.__name__] = traceback.format_exc()[-2000:]
        self.r.setdefault("section_s", {})[fn.__name__] = round(time.time() - started, 1)
        self.save()

    # -- (1) correctness
    def correctness(self) -> None:
        np, torch = self.np, self.torch
        from rerender.bridge.protocol import buffer_from_wire, buffer_to_wire
        cpu, gpu = self.runtime("cpu"), self.runtime(self.dev)
        h, w = (42, 70) if self.smoke else (200, 328)
        buffers = [self.buffer(h, w, 1), self.buffer(h, w, 2)]
        wires = [buffer_to_wire(b, send_mask=None) for b in buffers]
        rng = np.random.default_rng(3)
        z = rng.standard_normal((2, self.cfg.latent_size)).astype(np.float32)
        photos = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in buffers]

        def raw(rt):  # float network output on the buffers, as the served path computes it
            dev = {k: torch.from_numpy(np.stack([wi[k] for wi in wires])).to(rt.device) for k in wires[0]}
            with rt._inference():
                x = rt.encoding.encode_wire(dev, with_labels=rt.config.use_semantics, multiple=rt.multiple)
                y = rt._rerenderer(rt._layout(x), torch.from_numpy(z).to(rt.device))
            return x.cpu(), y[:, :, :h, :w].float().cpu()

        x_ref, y_ref = raw(cpu)
        u8_ref = cpu.rerender_wire(wires, z).images
        z_ref, s_ref = cpu.encode(photos, buffers), cpu.segment(buffers)
        C = self.r["correctness"] = {"size": [h, w]}
        x_dev, _ = raw(gpu)
        C["device_encoding_max_abs_diff"] = float((x_dev - x_ref).abs().max())
        precisions = {"fp32": None, "bf16": torch.bfloat16}
        for name, prec, tf32, tol in (("fp32", "fp32", True, 1e-2), ("fp32_no_tf32", "fp32", False, 1e-4),
                                      ("bf16", "bf16", True, 5e-2)):
            if self.cuda:
                torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
                gpu.autocast_dtype = precisions[prec]
            _, y = raw(gpu)
            rel = float((y - y_ref).norm() / y_ref.norm())
            d8 = np.abs(gpu.rerender_wire(wires, z).images.astype(int) - u8_ref)
            zrel = float(np.linalg.norm(gpu.encode(photos, buffers) - z_ref) / np.linalg.norm(z_ref))
            agree = float((gpu.segment(buffers) == s_ref).mean())
            C[name] = dict(rel_err=rel, u8_mean_abs=float(d8.mean()), u8_max_abs=int(d8.max()), latent_rel_err=zrel,
                           seg_agree=agree, tolerance=tol, ok=bool(rel < tol and zrel < tol and agree > 0.9))
        if self.cuda:
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
            gpu.autocast_dtype = torch.bfloat16
        # the served path: uint8 = the runtime on the wire-decoded buffer; float16 = the network's own values
        f16 = gpu.rerender_wire(wires[:1], z[:1], output="float16").images.astype(np.float32)
        u8 = gpu.rerender_wire(wires[:1], z[:1]).images
        same = gpu.rerender([buffer_from_wire(wires[0])], z[:1])
        C["served"] = dict(u8_equals_deep_buffer_path=bool(np.array_equal(u8, same)),
                           f16_minus_u8_over_255_max=float(np.abs(f16 - u8 / 255.0).max()))
        if "zmq" not in self.r["env"]["missing"] and "msgpack" not in self.r["env"]["missing"]:
            C["served"].update(self.socket_round_trip(gpu, buffers[0], z[0], u8[0]))

    def socket_round_trip(self, rt, buffer, z, expected) -> dict:
        from rerender.backend.server import Server
        from rerender.bridge import Client
        np = self.np
        server = Server(rt, f"ipc://{tempfile.mkdtemp()}/rr.sock", precision="bf16" if self.cuda else "fp32")
        server.start_in_thread()
        try:
            with Client(server.bound_address, timeout=120) as client:
                image = client.rerender(buffer, z)
                size = (96, 128) if self.smoke else (1080, 1920)
                big = self.buffer(*size, 5)
                list(client.rerender_many([big] * 2, z, in_flight=2))
                a = time.perf_counter()
                list(client.rerender_many([big] * 16, z, in_flight=8))
                fps = 16 / (time.perf_counter() - a)
            return {"socket_u8_equals_runtime": bool(np.array_equal(image, expected)),
                    f"socket_{size[0]}p_16_frames_in_flight8_fps": round(fps, 2)}
        finally:
            server.stop()

    # -- (2) server time per frame
    def server(self) -> None:
        np = self.np
        from rerender.bridge.protocol import buffer_to_wire
        rt = self.runtime(self.dev)
        sizes = {"60x60": (60, 60), "100x132": (100, 132)} if self.smoke else {"512^2": (512, 512),
                                                                               "1080p": (1080, 1920)}
        n = 2 if self.smoke else 20
        S = self.r["server"] = {}
        for name, (h, w) in sizes.items():
            wires = [buffer_to_wire(self.buffer(h, w, i), send_mask=None) for i in range(8)]
            z = np.random.default_rng(0).standard_normal((8, self.cfg.latent_size)).astype(np.float32)
            row = S[name] = {}
            walls, stages = [], []
            for i in range(n + 2):  # two warm-up frames (tables, cudnn autotune, staging buffers)
                a = time.perf_counter()
                t = rt.rerender_wire(wires[:1], z[:1]).timings_ms
                self.sync()
                if i >= 2:
                    walls.append((time.perf_counter() - a) * 1000)
                    stages.append({**t, "host": walls[-1] - t["forward"]})
            row["batch1_ms"] = median(walls)
            row["batch1_stages_ms"] = {k: median([s[k] for s in stages]) for k in stages[0]}
            row["batch8_per_frame_ms"] = round(self.timed(lambda: rt.rerender_wire(wires, z), max(2, n // 4)) / 8, 3)
            row["pipelined_per_frame_ms"] = self.pipelined(rt, wires, z, 4 if self.smoke else 4 * n)
            if name == list(sizes)[-1] and self.left() > 60:
                row.update(self.variants(wires[0], z[:1], n))
            self.save()

    def pipelined(self, rt, wires, z, frames: int) -> float:
        """Two request threads, as an overlapped server runs them: one frame's decode + upload while another
        computes (the runtime serialises the device part)."""
        def worker(k: int) -> None:
            for i in range(k, frames, 2):
                rt.rerender_wire([wires[i % len(wires)]], z[i % len(z):i % len(z) + 1])

        for _ in range(2):
            rt.rerender_wire(wires[:1], z[:1])
        self.sync()
        a = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.sync()
        return round((time.perf_counter() - a) * 1000 / frames, 3)

    def variants(self, wire, z, n: int) -> dict:
        from rerender.backend.runtime import ModelRuntime
        out = {}
        self.torch.manual_seed(0)
        plain = ModelRuntime(self._bundle(), self.dev, channels_last=False)
        out["batch1_ms_without_channels_last"] = self.timed(lambda: plain.rerender_wire([wire], z), n)
        if self.cuda and self.left() > 90:
            self.torch.manual_seed(0)
            compiled = ModelRuntime(self._bundle(), self.dev, compile=True)
            a = time.perf_counter()
            compiled.rerender_wire([wire], z)
            out["compile_first_frame_s"] = round(time.perf_counter() - a, 1)
            out["batch1_ms_compiled"] = self.timed(lambda: compiled.rerender_wire([wire], z), n)
        return out

    # -- (3) training
    def training(self) -> None:
        import PIL.Image
        from rerender.training.config import TrainConfig
        from rerender.training.data import collate
        from rerender.training.distributed import init_from_env
        from rerender.training.loader import device_inputs
        from rerender.training.trainer import Trainer
        from support_dataset import make_dataset

        fromarray = PIL.Image.fromarray  # the test helper passes mode=, which newer Pillow removed
        PIL.Image.fromarray = lambda a, mode=None: fromarray(a)
        tmp = Path(tempfile.mkdtemp(prefix="rr_train"))
        load, crop = (64, 32) if self.smoke else (512, 256)
        T = self.r["training"] = {"batch": 8, "crop": crop, "load": load}
        small = dict(network=self.net, vgg_width_divisor=8, d_channels=8) if self.smoke else {}
        tc = TrainConfig(load_size=load, crop_size=crop, batch_size=8, num_workers=0 if self.smoke else 2,
                         cache_views=True,
                         checkpoint_every=10**9, validate_every=10**9, log_every=10**9, features="vgg19", **small)
        trainer = Trainer(make_dataset(tmp / "D", n_train=8, n_val=1, height=load, width=load), tmp / "run", tc,
                          ctx=init_from_env(self.dev), progress=False)
        steps = 1 if self.smoke else 10
        for phase in ("rerender", "finetune", "semantic"):
            if self.left() < 30:
                break
            trainer.phase_index, trainer.phase_step = trainer.phases.index(phase), 0
            trainer.run(max_steps=1 if self.smoke else 2)  # warm-up (cudnn autotune, workers)
            self.sync()
            trainer.phase_step = 0
            a = time.perf_counter()
            trainer.run(max_steps=steps)
            self.sync()
            T[f"{phase}_steps_per_s"] = round(steps / (time.perf_counter() - a), 2)
            self.save()
        batch = collate([trainer.train_set[i] for i in range(8)])
        T["device_inputs_ms"] = self.timed(lambda: device_inputs(batch, trainer.encoding, trainer.device, True), 3)
        if self.cuda:
            T["max_mem_GB"] = round(self.torch.cuda.max_memory_allocated() / 1e9, 2)

    def run(self) -> dict:
        warnings.simplefilter("ignore")
        for fn in (self.correctness, self.server, self.training):
            self.section(fn)
        self.save()
        return self.r


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_check"), help="folder for gpu_check.json")
    parser.add_argument("--smoke", action="store_true", help="tiny networks and sizes (a CPU dry run)")
    parser.add_argument("--cpu", action="store_true", help="compare the CPU with itself even if CUDA is there")
    parser.add_argument("--budget-s", type=float, default=270.0, help="sections are skipped past this")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="unpack and use *.whl found here")
    parser.add_argument("--force-shim", action="store_true", help="import the checkout through the path shim")
    parser.add_argument("--pretend-missing", nargs="*", default=[], help="hide installed packages (e.g. zmq)")
    args = parser.parse_args(argv)
    env = bootstrap(args.force_shim, args.wheels, set(args.pretend_missing))
    result = Check(args, env).run()
    print(json.dumps(result, indent=1))
    return 1 if result.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
