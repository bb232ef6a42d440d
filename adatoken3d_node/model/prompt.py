"""The LLaVA `llava_v1` conversation template (single turn, text only).

    "{SYSTEM} USER: {question} ASSISTANT:"

llava_v1 uses SeparatorStyle.TWO with sep=" " (after the system prompt and the user turn) and
sep2="</s>" (after each assistant turn). A single-turn prompt ends right after "ASSISTANT:",
so only " " appears in it; the model ends its answer with "</s>", which is the EOS token.
"""

SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
SEP = " "
SEP2 = "</s>"
ROLES = ("USER", "ASSISTANT")
# What comes before and after the user's turn (llava3d.build_inputs splices <image> and locations between).
PROMPT_HEAD = f"{SYSTEM}{SEP}{ROLES[0]}: "
PROMPT_TAIL = f"{SEP}{ROLES[1]}:"


def build_prompt(question: str) -> str:
    """Return the llava_v1 prompt for one question; the answer is generated after "ASSISTANT:"."""
    return f"{PROMPT_HEAD}{question.strip()}{PROMPT_TAIL}"
