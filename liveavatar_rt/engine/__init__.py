"""Sampler, block stepper, streaming session and the Pipeline entry class."""
from .positions import SinkOffsets, ref_time
from .sampler import euler_step, flow_schedule
from .stepper import BlockStepper

__all__ = ["BlockStepper", "SinkOffsets", "euler_step", "flow_schedule", "ref_time"]
