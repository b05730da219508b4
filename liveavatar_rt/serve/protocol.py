"""The websocket protocol: message shapes, validation and error codes.

Client -> server (text messages are JSON objects with a "type"):
    {"type": "start", "image": "<base64 png/jpg/webp/bmp>", "prompt": null, "seed": 0,
     "audio": {"format": "s16le" | "f32le", "sample_rate": 16000, "channels": 1}}
    <binary>   raw PCM in the declared format, interleaved if channels > 1, any length
               (whole sample frames), sent only after "ready"
    {"type": "ack", "seq": n}   segment n was received (the server keeps <= ack_window unacked)
    {"type": "end"}             no more audio: the server renders the rest, sends "done", closes
    {"type": "player", "ttff_s": 0.9, "frames_shown": 120, "frames_dropped": 0}
                                optional player-side figures (the web page sends them): time from
                                its first audio sent to its first frame painted, for /metrics
Server -> client:
    {"type": "ready", "session", "width", "height", "fps", "audio_rate", "setup_s", "note"}
    {"type": "init", "mime", "bytes"}  + <binary> fMP4 init segment (once, before any segment)
    {"type": "segment", "seq", "block", "start_frame", "frames", "bytes", "stats"}  + <binary>
    {"type": "done", "stats"}
    {"type": "error", "code", "message"}  then the server closes the connection
Every error names its problem; codes are the ERROR_CODES keys.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass

import numpy as np

from .config import ServeConfig

# code -> websocket close code used after the error message
ERROR_CODES = {
    "unauthorized": 1008, "bad_origin": 1008, "bad_host": 1008, "busy": 1013, "bad_json": 1003,
    "bad_message": 1008, "protocol": 1008, "bad_image": 1008, "image_too_large": 1009, "bad_audio_format": 1008,
    "bad_sample_rate": 1008, "bad_audio": 1008, "message_too_large": 1009, "bad_request": 1008,
    "start_timeout": 1008, "audio_timeout": 1008, "idle_timeout": 1008, "ack_timeout": 1008, "internal": 1011,
}
# what the server decodes; the README lists these (GIF, TIFF, ... are refused as bad_image)
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
AUDIO_FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}


class ProtocolError(Exception):
    """A client error: sent to that client as {"type": "error", "code", "message"}."""

    def __init__(self, code: str, message: str):
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code, self.message = code, message

    @property
    def close_code(self) -> int:
        return ERROR_CODES[self.code]

    def to_json(self) -> dict:
        return {"type": "error", "code": self.code, "message": self.message}


@dataclass(frozen=True)
class AudioFormat:
    dtype: np.dtype
    sample_rate: int
    channels: int

    @property
    def frame_bytes(self) -> int:
        return self.dtype.itemsize * self.channels


@dataclass(frozen=True)
class StartRequest:
    image: np.ndarray  # uint8 [H, W, 3]
    prompt: str | None
    seed: int
    audio: AudioFormat


def parse_text(text: str, cfg: ServeConfig, limit: int | None = None) -> dict:
    """A text message -> a dict with a known "type" (ProtocolError otherwise). `limit`: the
    largest text accepted (default the message limit; control messages after start get less)."""
    limit = cfg.max_message_bytes if limit is None else limit
    if len(text) > limit:
        raise ProtocolError("message_too_large", f"text message of {len(text)} bytes exceeds the limit of "
                                                 f"{limit} bytes")
    try:
        msg = json.loads(text)
    except ValueError as e:
        raise ProtocolError("bad_json", f"text messages must be JSON objects: {e}") from None
    except RecursionError:  # "[[[[...": the decoder's nesting guard; not an internal error
        raise ProtocolError("bad_json", "text messages must be JSON objects: nested too deeply") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("bad_message", 'a message must be a JSON object with a string "type"')
    if msg["type"] not in ("start", "ack", "end", "player"):
        raise ProtocolError("bad_message", f"unknown message type {msg['type']!r}; expected start, ack, end or player")
    return msg


def parse_ack(msg: dict) -> int:
    seq = msg.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ProtocolError("bad_message", f'"ack" needs an integer "seq" >= 0, got {seq!r}')
    return seq


def parse_player(msg: dict) -> dict:
    """Player figures: each optional, finite and >= 0 (ttff_s below a day, counts integers)."""
    out = {}
    for key, kind in (("ttff_s", float), ("frames_shown", int), ("frames_dropped", int)):
        v = msg.get(key)
        if v is None:
            continue
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and v == v and 0 <= v < 86400 * 1000
        if not ok or (kind is int and int(v) != v):
            raise ProtocolError("bad_message", f'"player" field {key!r} must be a {kind.__name__} >= 0, got {v!r}')
        out[key] = kind(v)
    return out


def parse_start(msg: dict, cfg: ServeConfig) -> StartRequest:
    """Validate a start message and decode its image (the decode is bounded by the limits)."""
    unknown = set(msg) - {"type", "image", "prompt", "seed", "audio"}
    if unknown:
        raise ProtocolError("bad_message", f"unknown start fields {sorted(unknown)}")
    prompt = msg.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ProtocolError("bad_request", f'"prompt" must be a string or null, got {type(prompt).__name__}')
    seed = msg.get("seed", cfg.seed)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 31:
        raise ProtocolError("bad_request", f'"seed" must be an integer in [0, 2^31), got {seed!r}')
    return StartRequest(decode_image(msg.get("image"), cfg), prompt, seed, parse_audio_format(msg.get("audio"), cfg))


def parse_first_message(text: str | None, cfg: ServeConfig) -> StartRequest:
    """The connection's first message (text, or None when it was binary) -> StartRequest.
    JSON parsing and the image decode take up to ~100 ms for the largest allowed start
    message: connection.py runs this off the event loop."""
    if text is None:
        raise ProtocolError("protocol", 'the first message must be a JSON "start" message, got binary data')
    parsed = parse_text(text, cfg)
    if parsed["type"] != "start":
        raise ProtocolError("protocol", f'the first message must be "start", got {parsed["type"]!r}')
    return parse_start(parsed, cfg)


def parse_audio_format(spec, cfg: ServeConfig) -> AudioFormat:
    if not isinstance(spec, dict):
        raise ProtocolError("bad_audio_format", '"audio" must be an object {"format", "sample_rate", "channels"}')
    fmt = spec.get("format", "s16le")
    if fmt not in AUDIO_FORMATS:
        raise ProtocolError("bad_audio_format", f"audio format {fmt!r} is not supported; use one of "
                                                f"{sorted(AUDIO_FORMATS)}")
    rate = spec.get("sample_rate")
    if isinstance(rate, bool) or not isinstance(rate, int):
        raise ProtocolError("bad_sample_rate", f'"sample_rate" must be an integer number of Hz, got {rate!r}')
    if not cfg.min_sample_rate <= rate <= cfg.max_sample_rate:
        raise ProtocolError("bad_sample_rate", f"sample rate {rate} Hz is outside the accepted range "
                                               f"[{cfg.min_sample_rate}, {cfg.max_sample_rate}] Hz")
    ch = spec.get("channels", 1)
    if isinstance(ch, bool) or not isinstance(ch, int) or not 1 <= ch <= cfg.max_channels:
        raise ProtocolError("bad_audio_format", f'"channels" must be an integer in [1, {cfg.max_channels}], got {ch!r}')
    return AudioFormat(AUDIO_FORMATS[fmt], rate, ch)


def check_whole_frames(nbytes: int, fmt: AudioFormat) -> None:
    if nbytes % fmt.frame_bytes:
        raise ProtocolError("bad_audio", f"audio message of {nbytes} bytes is not a whole number of "
                                         f"{fmt.frame_bytes}-byte sample frames ({fmt.dtype.name} x {fmt.channels})")


def decode_pcm(data: bytes, fmt: AudioFormat) -> np.ndarray:
    """Binary audio (bytes or memoryview) -> mono float32 [n] (channels averaged). Whole sample
    frames only."""
    check_whole_frames(len(data), fmt)
    x = np.frombuffer(data, fmt.dtype).reshape(-1, fmt.channels)
    if fmt.dtype.kind == "i":
        x = x.astype(np.float32) / 32768.0
    elif not np.isfinite(x).all():
        raise ProtocolError("bad_audio", "float audio contains NaN or infinity")
    return x.mean(axis=1, dtype=np.float32) if fmt.channels > 1 else x[:, 0].astype(np.float32)


def decode_image(b64, cfg: ServeConfig) -> np.ndarray:
    """base64 image file -> uint8 [H, W, 3]; size limits checked before the pixels are decoded."""
    from PIL import Image, UnidentifiedImageError

    from ..io.image import ImageError, load_image

    if not isinstance(b64, str) or not b64:
        raise ProtocolError("bad_image", '"image" must be a non-empty base64 string of an image file')
    if len(b64) > cfg.max_image_bytes * 4 // 3 + 4:
        raise ProtocolError("image_too_large", f"image of ~{len(b64) * 3 // 4} bytes exceeds the limit of "
                                               f"{cfg.max_image_bytes} bytes")
    if b64.startswith("data:"):  # a data URL from a browser's FileReader
        b64 = b64.partition(",")[2]
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ProtocolError("bad_image", f'"image" is not valid base64: {e}') from None
    if len(raw) > cfg.max_image_bytes:
        raise ProtocolError("image_too_large", f"image of {len(raw)} bytes exceeds the limit of "
                                               f"{cfg.max_image_bytes} bytes")
    try:
        with Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS) as im:
            w, h = im.size  # header only: nothing decoded yet
            if w * h > cfg.max_image_pixels:
                raise ProtocolError("image_too_large", f"image of {w}x{h} pixels exceeds the limit of "
                                                       f"{cfg.max_image_pixels} pixels")
            rgb = np.asarray(im.convert("RGB"))
    except ProtocolError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ProtocolError("bad_image", f"cannot decode the image (accepted: png, jpg, webp, bmp): {e}") from None
    try:
        return load_image(rgb)
    except ImageError as e:
        raise ProtocolError("bad_image", str(e)) from None
