"""`PYTHONPATH=. .venv/bin/python bench/landmark_ceiling.py` (needs .venv-face: `make face-env`).

Ceiling of the landmark measure on these cartoon faces: FaceMesh on the renderer's own
frames driven by the ground-truth mouth track (neutral pose), vs the truth and the loudness."""
import json, sys
import numpy as np
from recipes.tiny.faces import FaceRenderer
from recipes.tiny.identity import sample_identity
from recipes.tiny.clips import HELDOUT_START
from recipes.tiny.motion import NEUTRAL_POSE
from recipes.tiny.make_eval_assets import EVAL_IDENTITIES
from liveavatar_rt.eval.clips import load_clip_set, LoopedClips
from liveavatar_rt.eval.landmarks import FaceLandmarker, window_measures, frame_rms
from liveavatar_rt.eval.lipsync import mouth_opening, lipsync_correlation
cs = load_clip_set("assets/eval")
with FaceLandmarker() as lm:
    for k, off in enumerate(EVAL_IDENTITIES):
        idn = sample_identity(HELDOUT_START + off)
        r = FaceRenderer(idn, 128)
        name = f"id{k}"
        pcm, truth = LoopedClips(cs, name).next_clip()
        frames = np.stack([r.frame(NEUTRAL_POSE, (float(o), 0.5), 0.0) for o in truth])
        m = lm.measure(frames)
        op = mouth_opening(frames, cs.identities[name].mouth_box)
        w = window_measures(m, truth, frame_rms(pcm, 640), op)
        px = lipsync_correlation(op, truth)
        print(name, len(frames), f"pixel r {px[0]:.3f}", {k2: round(v, 3) for k2, v in w.items()})
