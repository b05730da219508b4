"""The entry class: load a model once, open any number of sessions on it.

    pipe = Pipeline.from_pretrained("tiny")            # or a published-layout directory
    video = pipe.generate("face.png", pcm, 16000)      # offline: same frames as streaming
    with pipe.session("face.png", seed=0) as sess: ... # streaming, see session.py

    pipe = Pipeline.from_pretrained("tiny", layout="4+1")  # the same, on a TPP ring of 5 ranks
    ...; pipe.close()                                       # (or `with Pipeline.from_pretrained(...)`)

The layout is chosen here and only here: "1" runs every block in this process
(`LocalExecutor`); "R+1" / "R" spread the denoising steps over R DiT ranks (+ a VAE rank) of a
timestep-forcing pipeline (`parallel.front.RingExecutor`). Sessions are the same `Session`
either way. A Pipeline does not change after construction.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import AUDIO_RATE, KV_CACHE_DTYPES, StreamConfig, check_kv_cache_dtype, from_name
from ..envvars import tiny_random
from ..model import CausalWanS2V
from ..io.checkpoint import FP8_FILE, check_fp8_file
from ..io.decoder import load_decoder
from ..io.published import PUBLISHED_FILES
from ..model.compile import compile_blocks, compile_forced
from ..model.fp8 import Fp8Linear, check_precision, to_fp8
from ..model.init import init_random_
from ..model.vae import VAEConfig, WanVAE
from ..ops import OpTable
from .conditioning import ConditioningCache
from .executor import LocalExecutor, SessionSpec
from .pipelined import PipelinedExecutor, check_schedule
from .positions import PositionPolicy
from .session import STREAM_START_DROP, Session

PACKAGED_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
# The placeholder tiny default: the golden-fixture DiT sizes and a small Wan2.1-layout VAE.
TINY_VAE = VAEConfig(dim=8)
TINY_MAX_AREA = 128 * 128
# Presets that only exist with seeded random weights: `medium` has the 14B's head width (4 x 128)
# at a size this CPU runs, for kernel benchmarks (`liveavatar-rt bench --preset medium --compare`).
RANDOM_PRESETS = ("medium",)
PUBLISHED_MAX_AREA = 704 * 384


@dataclass
class Video:
    frames: np.ndarray  # uint8 [N, H, W, 3]
    audio: np.ndarray  # float32 PCM at `sample_rate`, the same duration as the frames
    fps: int
    sample_rate: int

    def save(self, path: str | os.PathLike) -> None:
        from ..io.video import Mp4Writer

        with Mp4Writer(path, self.frames.shape[2], self.frames.shape[1], fps=self.fps, sample_rate=self.sample_rate) as w:
            w.write(self.frames, self.audio)


def _is_single(layout) -> bool:
    return str(layout).strip() == "1"


class Pipeline:
    def __init__(self, model: CausalWanS2V, vae: WanVAE, stream: StreamConfig | None = None,
                 max_area: int = TINY_MAX_AREA, default_text: torch.Tensor | None = None, note: str = "",
                 text_encoder=None, audio_features=None, weights: dict | None = None):
        self.model, self.vae = model, vae
        self._stream, self._max_area = stream or StreamConfig(), max_area
        self.text_encoder = text_encoder  # prompt -> [Lt, 4096]; None: the model takes prompt_embeds only
        self.audio_features = audio_features  # pcm16k -> [layers, dim, T50] (wav2vec2); None: streaming log-mel
        self.dtype = model.ops.dtype
        self.default_text = default_text if default_text is not None else torch.zeros(1, model.cfg.text_dim, dtype=self.dtype)
        self.note = note  # shown to users (e.g. "random weights")
        self.weights = weights or {}  # where the weights came from (tiny files: path, sha256, training info)
        # per-image session conditioning (VAE encodes + warmed decoder), see conditioning.py
        self.conditioning_cache = ConditioningCache(size=4)
        self._ring = None  # parallel.front.FrontRing when the layout is a TPP ring
        self._decoder = vae  # what decodes the video: the VAE, or a TAEHV (from_pretrained(decoder=...))
        self._kv_cache_dtype = None  # None: K/V caches in the compute dtype; "fp8" (from_pretrained)
        self._compiled = False  # from_pretrained(compile=True): the DiT blocks under torch.compile
        self._schedule = "sequential"  # from_pretrained(schedule=...): how one process runs the steps

    @property
    def stream(self) -> StreamConfig:
        """The streaming configuration (blocks, steps, cache, cuda_graphs): fixed at load."""
        return self._stream

    @property
    def decoder(self):
        """What decodes the video (`new_stream()`): the model's VAE, or the TAEHV-layout decoder
        given as from_pretrained(decoder=...). The VAE still encodes the reference image."""
        return self._decoder

    @property
    def precision(self) -> str:
        """'fp8' when the DiT's linears are E4M3 (precision='fp8'), else its dtype ('bf16' / 'fp32')."""
        if any(isinstance(m, Fp8Linear) for m in self.model.modules()):
            return "fp8"
        return {torch.bfloat16: "bf16", torch.float32: "fp32"}.get(self.dtype, str(self.dtype))

    @property
    def latent_dtype(self) -> torch.dtype:
        """The dtype of a block's latent between denoising steps: the velocity's. With fp8
        linears it is fp32 (the published fp8 layer returns its input's dtype, and fp32 inputs
        reach the residual stream through the audio injector), else the compute dtype."""
        return torch.float32 if self.precision == "fp8" else self.dtype

    @property
    def kv_cache_dtype(self) -> str | None:
        """None (the ring and conditioning K/V in the compute dtype, as published) or "fp8"
        (E4M3 with per-token, per-head scales; cache/kv.py): fixed at load."""
        return self._kv_cache_dtype

    @property
    def compiled(self) -> bool:
        """Whether the DiT blocks run under torch.compile (from_pretrained(compile=True))."""
        return self._compiled

    @property
    def schedule(self) -> str:
        """How this process runs the denoising steps (from_pretrained(schedule=...)):
        'sequential' (each block's steps in turn) or 'pipelined' (engine/pipelined.py)."""
        return self._schedule

    @property
    def kv_dtype(self) -> torch.dtype | None:
        """The torch storage dtype of the K/V caches: None (the compute dtype) or E4M3."""
        return None if self._kv_cache_dtype is None else KV_CACHE_DTYPES[self._kv_cache_dtype]

    @property
    def max_area(self) -> int:
        """Generation area in pixels (the output size follows the image's aspect): fixed at load."""
        return self._max_area

    @property
    def layout(self) -> str:
        """'1' (this process) or the TPP ring's layout ('4+1', '2+1', '2', ...)."""
        return "1" if self._ring is None else str(self._ring.layout)

    @property
    def ring(self):
        """The TPP ring (parallel.front.FrontRing; `reports` after close() on a local ring), or None."""
        return self._ring

    @property
    def max_sessions(self) -> int | None:
        """Sessions that can run at once: None (no limit) in one process, 1 on a ring."""
        return None if self._ring is None else 1

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = "tiny", device: str = "cpu",
                        dtype: torch.dtype = torch.bfloat16, seed: int = 0, force_provider=None,
                        quiet: bool = False, *, layout: str = "1", stream: StreamConfig | None = None,
                        max_area: int | None = None, ring=None, precision: str = "bf16",
                        decoder: str | os.PathLike | None = None,
                        kv_cache_dtype: str | None = None, compile: bool = False,
                        schedule: str = "sequential") -> "Pipeline":
        """Load a model: 'tiny' (packaged weights, or seeded random ones until trained weights
        ship), a tiny single-file model (`*.safetensors` written by
        `liveavatar_rt.io.tiny.save_tiny`, e.g. a candidate from recipes/tiny/train/export.py
        --out), or a directory in the published layout (DiT shards + index json,
        liveavatar.safetensors LoRA, Wan2.1_VAE.pth).

        layout: "1" (one process) or a TPP ring: "R+1" (R DiT ranks + a VAE rank, e.g. "4+1")
        or "R" (the VAE on the last DiT rank). A ring's other ranks are spawned here as local
        processes (gloo on 127.0.0.1), or, under torchrun, are the other torchrun processes:
        there every rank calls from_pretrained with the same arguments, ranks above 0 serve
        the ring inside this call and leave their process when rank 0 closes the pipeline.
        stream: the StreamConfig (default: the published one; e.g. cuda_graphs); max_area: the
        generation area in pixels (default: the model's); ring: parallel.RingOptions (timeouts,
        threads per spawned rank, start method). Close a ring pipeline with close() (or `with`).
        precision: "bf16" (published default) or "fp8" (the published `--fp8` linears, per-tensor
        E4M3 weights and activations; model/fp8.py). A published-layout directory holding
        `liveavatar_rt_fp8.safetensors` (`liveavatar-rt quantize`) loads that file for fp8.
        decoder: None (the model's VAE decodes) or a TAEHV-layout weights file (.pth /
        .safetensors, e.g. madebyollin/taehv's taew2_1.pth for the Wan 2.1 latents of the 14B):
        a tiny streaming decoder of the same latent space, ~20x less work than the VAE.
        kv_cache_dtype: None (the K/V caches in the compute dtype, as published) or "fp8" (E4M3
        with one fp32 scale per token and head: ~half the cache memory of bf16; cache/kv.py).
        compile: torch.compile the DiT blocks (model/compile.py: inductor, the elementwise ops on
        their references so it can fuse them, the cache step eager); the first block of each
        session shape compiles (seconds).
        schedule (layout "1"): "sequential" (each block's steps in turn: the lowest latency) or
        "pipelined" (TPP in one process, engine/pipelined.py: the next step of every block in
        flight runs as one batch; faster when audio is ahead of the video, e.g. offline).
        A ring already pipelines across processes."""
        check_precision(precision, dtype)
        check_schedule(schedule)
        check_kv_cache_dtype(kv_cache_dtype)
        load = dict(name_or_path=name_or_path, device=device, dtype=dtype, seed=seed, force_provider=force_provider,
                    stream=stream, max_area=max_area, precision=precision,
                    decoder=None if decoder is None else str(decoder), kv_cache_dtype=kv_cache_dtype,
                    compile=bool(compile), schedule=schedule)
        if _is_single(layout):
            if ring is not None:
                raise ValueError("ring options need a TPP layout ('4+1', '2+1', '2', ...), not layout '1'")
            return cls._load(load, quiet)
        from ..parallel.launch import RingOptions, rank_device, start_ring, torchrun_rank
        from ..parallel.layout import Layout

        if schedule != "sequential":
            raise ValueError(f"schedule={schedule!r} is TPP in one process; layout {layout!r} is a TPP ring, "
                             "which already pipelines the steps across processes: use layout '1'")
        lay, opts = Layout.parse(layout), ring or RingOptions()
        if opts.torchrun():
            device = load["device"] = rank_device(device, torchrun_rank())
        pipe = cls._load(load, quiet)
        pipe._ring = start_ring(pipe, lay, load, opts)
        return pipe

    @classmethod
    def _load(cls, load: dict, quiet: bool) -> "Pipeline":
        """One process's Pipeline from from_pretrained's keywords."""
        name, device, dtype = load["name_or_path"], load["device"], load["dtype"]
        compiled = load.get("compile", False)
        force = compile_forced(load["force_provider"]) if compiled else load["force_provider"]
        ops = OpTable(device, dtype, force=force)
        opts = {"stream": load["stream"], "max_area": load["max_area"], "precision": load.get("precision", "bf16")}
        if str(name) == "tiny":
            pipe = cls._tiny(ops, device, dtype, load["seed"], quiet, opts)
        elif str(name) in RANDOM_PRESETS:
            pipe = cls._random(str(name), ops, device, dtype, load["seed"], quiet, opts, "a benchmark size, never trained")
        elif Path(name).is_file():
            pipe = cls._tiny_file(Path(name), ops, opts)  # a non-tiny file is named in the error
        else:
            pipe = cls._from_directory(Path(name), ops, device, dtype, quiet, opts)
        if opts["precision"] == "fp8" and pipe.precision != "fp8":  # tiny models: quantized after loading
            to_fp8(pipe.model)
        if load.get("decoder"):
            pipe._decoder = load_decoder(load["decoder"], pipe.vae, dtype, device)
        pipe._kv_cache_dtype = load.get("kv_cache_dtype")
        pipe._schedule = load.get("schedule", "sequential")
        if compiled:
            compile_blocks(pipe.model)
            pipe._compiled = True
        return pipe

    @classmethod
    def _tiny_file(cls, path: Path, ops: OpTable, opts: dict) -> "Pipeline":
        import hashlib

        from ..io.tiny import load_tiny

        model, vae, meta = load_tiny(path, ops)
        weights = {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "info": meta["info"]}
        return cls(model, vae, stream=opts["stream"], max_area=opts["max_area"] or TINY_MAX_AREA, weights=weights)

    @classmethod
    def _tiny(cls, ops: OpTable, device: str, dtype: torch.dtype, seed: int, quiet: bool, opts: dict) -> "Pipeline":
        """The bundled trained tiny model when its weights file is there; otherwise (a checkout
        that has not shipped them yet, or `LIVEAVATAR_RT_TINY_RANDOM=1` for tests of the code
        paths only) seeded random weights, said loudly."""
        ckpt = PACKAGED_WEIGHTS / "tiny.safetensors"
        if ckpt.is_file() and not tiny_random():
            return cls._tiny_file(ckpt, ops, opts)
        return cls._random("tiny", ops, device, dtype, seed, quiet, opts, "without trained weights")

    @classmethod
    def _random(cls, name: str, ops: OpTable, device: str, dtype: torch.dtype, seed: int, quiet: bool, opts: dict,
                why: str) -> "Pipeline":
        """Preset `name` with seeded random weights (the DiT, the tiny VAE, log-mel audio)."""
        model = init_random_(CausalWanS2V(from_name(name), ops), seed=seed, device=device)
        vae = WanVAE(TINY_VAE, dtype=dtype, device=device, ops=ops).init_random_(seed)
        note = (f"model {name!r} ({why}): using seeded random weights "
                f"(seed {seed}); the video shows noise, not a face")
        if not quiet:
            print(f"liveavatar_rt: {note}", file=sys.stderr)
        return cls(model, vae, stream=opts["stream"], max_area=opts["max_area"] or TINY_MAX_AREA, note=note)

    @classmethod
    def _from_directory(cls, root: Path, ops: OpTable, device: str, dtype: torch.dtype, quiet: bool,
                        opts: dict) -> "Pipeline":
        """DiT (config.json + shards or one file), LoRA, VAE, umT5 + tokenizer, wav2vec2: every
        missing file is named before anything heavy is loaded."""
        from ..audio import Wav2VecFeatures
        from ..io import load_dit, published_config
        from ..io.text import TextEncoder, infer_umt5_config
        from ..io.vae_loading import load_vae, read_vae_state_dict

        if not root.is_dir():
            raise FileNotFoundError(f"model directory {str(root)!r} does not exist (or use 'tiny')")
        cfg = published_config(root)
        if cfg is None:
            raise FileNotFoundError(f"{root} has no config.json (the DiT's diffusers config)")
        paths = {what: root / name for what, name in PUBLISHED_FILES.items()}
        fp8_file = root / FP8_FILE
        use_fp8_file = opts["precision"] == "fp8" and fp8_file.is_file()  # quantized, LoRA merged
        missing = [f"{what}: {p.relative_to(root)}" for what, p in paths.items()
                   if not p.exists() and not (use_fp8_file and what == "Live Avatar LoRA")]
        if missing:
            raise FileNotFoundError(f"{root} is missing {missing}")
        t0 = time.perf_counter()
        if use_fp8_file:
            check_fp8_file(fp8_file)
            model = load_dit(fp8_file, cfg, dtype=dtype, device=device, ops=ops, precision="fp8")
        else:
            model = load_dit(root, cfg, dtype=dtype, device=device, lora=paths["Live Avatar LoRA"], ops=ops,
                             precision=opts["precision"])
        vae_sd = read_vae_state_dict(paths["Wan2.1 VAE"])
        vae_cfg = VAEConfig(dim=vae_sd["encoder.conv1.weight"].shape[0])  # 96 for the published VAE
        del vae_sd
        vae = load_vae(paths["Wan2.1 VAE"], vae_cfg, dtype, device, ops=ops)
        text = TextEncoder((paths["umT5 encoder"], paths["umT5 tokenizer folder"]), dtype, device,
                           config=infer_umt5_config(paths["umT5 encoder"], cfg.text_len), ops=ops)
        audio = Wav2VecFeatures(paths["wav2vec2 folder"], device=device, dtype=dtype)
        if not quiet:
            print(f"liveavatar_rt: loaded {root} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        return cls(model, vae, stream=opts["stream"], max_area=opts["max_area"] or PUBLISHED_MAX_AREA,
                   text_encoder=text, audio_features=audio)

    def new_audio_stream(self, lead_in: bool = True, audio_window=None):
        """A session's audio stream. lead_in: start it with the stream-start span the published
        rule drops (STREAM_START_DROP frames of silence), so every pushed sample is in the output.
        audio_window (wav2vec2 models): None or an AudioWindow streams windowed wav2vec2 features
        (audio/windowed.py; None: the default window); "offline": the published path, features
        over the whole utterance, blocks only after end_audio()."""
        from ..audio import AudioStream, LogMelFeatures
        from ..audio.offline import OfflineAudioStream
        from ..audio.windowed import AudioWindow, WindowedAudioStream

        s = self.stream
        if self.audio_features is not None:
            if audio_window == "offline":
                audio = OfflineAudioStream(self.audio_features, 4 * s.frames_per_block, s.fps, s.blocks_per_clip)
            elif audio_window is None or isinstance(audio_window, AudioWindow):
                audio = WindowedAudioStream(self.audio_features, audio_window or AudioWindow(),
                                            4 * s.frames_per_block, s.fps, s.blocks_per_clip)
            else:
                raise ValueError(f"audio_window={audio_window!r}: use None (streaming, default window), an "
                                 "AudioWindow or 'offline'")
        elif audio_window is not None:
            raise ValueError("audio_window= applies to wav2vec2 models (the published layout); this model streams "
                             "log-mel features")
        else:
            cfg = self.model.cfg
            audio = AudioStream(LogMelFeatures(n_mels=cfg.audio_dim, layers=cfg.audio_layers),
                                video_frames_per_block=4 * self.stream.frames_per_block, fps=self.stream.fps)
        if lead_in:
            audio.lead_in(STREAM_START_DROP * audio.samples_per_frame)
        return audio

    def session(self, image, prompt: str | None = None, prompt_embeds: torch.Tensor | None = None, seed: int = 0,
                sink_replacement: bool = True, positions: PositionPolicy | None = None,
                sink_offset: int | None = None, decode: bool = True, lead_in: bool = True,
                audio_window=None) -> Session:
        """Open a streaming session. image: path, PIL image or uint8 array [H, W, 3].
        prompt: text, encoded by the model's umT5 (published layout); prompt_embeds: [Lt, 4096]
        precomputed encoder output instead. The tiny preset has no text model: it takes
        prompt_embeds or nothing. decode=False: blocks carry only `latent` (video has 0 frames) for
        a caller that decodes elsewhere or not at all (latent-space probes, a separate decoder).
        lead_in=False: the published stream start (its first 3 frames and their 120 ms of the
        user's audio are dropped); default True pads the start instead, so no speech is lost.
        audio_window (wav2vec2 models): None (stream with the default AudioWindow), an
        `audio.AudioWindow(window_s, lookahead_s)`, or "offline" (the published whole-utterance
        features: exact published numerics, blocks only after end_audio())."""
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("pass prompt or prompt_embeds, not both")
        if prompt is not None:
            if self.text_encoder is None:
                raise ValueError("this model has no text encoder (the tiny preset): pass prompt_embeds "
                                 "[Lt, 4096] or no prompt")
            prompt_embeds = self.text_encoder(prompt)
        text = self.default_text if prompt_embeds is None else prompt_embeds
        return Session(self, image, text.to(self.dtype), seed=seed, sink_replacement=sink_replacement,
                       positions=positions, sink_offset=sink_offset, decode=decode, lead_in=lead_in,
                       audio_window=audio_window)

    def _executor(self, spec: SessionSpec, wake):
        """The block executor of a new session: this process, or the ring (one session at a time)."""
        if self._ring is None:
            return PipelinedExecutor(self, spec) if self._schedule == "pipelined" else LocalExecutor(self, spec)
        return self._ring.open(spec, wake)

    def close(self) -> None:
        """Shut the ring down (every rank ends); nothing to do in one process. Idempotent."""
        if self._ring is not None:
            self._ring.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def generate(self, image, audio, sample_rate: int, seed: int = 0, **session_kw) -> Video:
        """Offline: the whole clip at once; the same frames as streaming the same audio."""
        with self.session(image, seed=seed, **session_kw) as sess:
            sess.push_audio(audio, sample_rate)
            sess.end_audio()
            blocks = list(sess.frames())
        return Video(np.concatenate([b.video for b in blocks]), np.concatenate([b.audio for b in blocks]),
                     self.stream.fps, AUDIO_RATE)
