"""score-ray: SCoRe (training LLMs to self-correct via RL) on Ray, vLLM and DeepSpeed."""

__version__ = "0.1.0"
