"""Sampler, block stepper, streaming session and the Pipeline entry class."""
from .pipeline import Pipeline, Video
from .positions import PositionPolicy, SinkOffsets, ref_time
from .sampler import euler_step, flow_schedule
from .session import Block, Session, SessionClosed
from .stepper import BlockStepper, StepRow

__all__ = ["Block", "BlockStepper", "Pipeline", "PositionPolicy", "Session", "SessionClosed", "SinkOffsets", "StepRow",
           "Video", "euler_step", "flow_schedule", "ref_time"]
