"""Tokenizers for the checkpoints made here, and the cache the random checkpoint is written to.

The random checkpoint (random_checkpoint.py) and the shipped model (training/train.py) use what is
here, so that the loader, the model and the node run end to end without downloading anything:

    build_tokenizer()                 byte-level BPE (VOCAB_SIZE tokens, SPECIAL_TOKENS first) trained on
                                      CORPUS; encodes any text without unknowns; deterministic
    _make_tokenizer_files_portable()  saved tokenizer files loadable by transformers 4.x and 5.x
    write_sentencepiece_tokenizer()   a LLaMA-style SentencePiece tokenizer as Vicuna-based checkpoints
                                      ship it: tokenizer.model and its configs, no tokenizer.json
    cache_dir()                       $ADATOKEN3D_CACHE, default ~/.cache/adatoken3d
"""

import json
import os
import pathlib

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3, LLaMA order plus a pad
VOCAB_SIZE = 512

# Tokenizer training text. Byte-level BPE encodes any text without unknowns (every byte is in the
# base alphabet); this corpus only decides which merges exist, i.e. how short common text gets.
CORPUS = [
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "USER: What is on the table? ASSISTANT: There is a red mug and a laptop on the table.",
    "USER: Where is the chair? ASSISTANT: The chair is next to the desk, near the window.",
    "USER: How many chairs are in the room? ASSISTANT: There are four chairs in the room.",
    "USER: Is the door open? ASSISTANT: Yes, the door on the left is open.",
    "USER: What color is the sofa? ASSISTANT: The sofa is dark blue.",
    "USER: Can the robot reach the shelf? ASSISTANT: Yes, the shelf is within reach of the robot arm.",
    "USER: Where should I go to find the kitchen? ASSISTANT: Go through the hallway and turn right.",
    "USER: What is behind the robot? ASSISTANT: A white wall and a trash bin are behind the robot.",
    "USER: Describe the scene. ASSISTANT: This is a small office with a desk, two monitors and a plant.",
    "USER: Is there a person in the room? ASSISTANT: No, the room is empty.",
    "USER: Which object is closest to the camera? ASSISTANT: The black backpack on the floor is closest.",
    "USER: How far is the bed from the door? ASSISTANT: The bed is about three meters from the door.",
    "USER: What is under the desk? ASSISTANT: A power strip and a pair of shoes are under the desk.",
    "USER: Find the cup. ASSISTANT: The cup is on the kitchen counter, to the left of the sink.",
    "USER: Is the path to the window clear? ASSISTANT: No, a box is blocking the path to the window.",
    "USER: What is the largest object in the scene? ASSISTANT: The largest object is the bookshelf.",
    "USER: Where is the lamp? ASSISTANT: The lamp stands in the corner behind the armchair.",
    "USER: How many doors does the room have? ASSISTANT: The room has two doors.",
    "USER: Pick up the bottle. ASSISTANT: The bottle is on the second shelf; move the arm up to reach it.",
    "USER: What is to the right of the monitor? ASSISTANT: A keyboard and a small speaker.",
    "USER: Is the floor wet? ASSISTANT: I cannot tell from the point cloud; the floor looks flat.",
    "USER: Which chair is free? ASSISTANT: The chair at the end of the table is free.",
    "USER: Navigate to the sink. ASSISTANT: The sink is in the kitchen, about five meters ahead.",
    "USER: What is hanging on the wall? ASSISTANT: A clock and a whiteboard are hanging on the wall.",
    "USER: Count the plants. ASSISTANT: There are three plants, two on the floor and one on the desk.",
    "USER: Is the trash bin full? ASSISTANT: The trash bin is about half full.",
    "USER: Where is the nearest exit? ASSISTANT: The nearest exit is the door behind you.",
    "USER: What is the robot looking at? ASSISTANT: The robot is looking at a table with two cups.",
    "USER: Is the box heavy? ASSISTANT: The box looks large, but I cannot know its weight.",
    "USER: Where did I leave my keys? ASSISTANT: The keys are on the table next to the door.",
    "USER: What is between the sofa and the TV? ASSISTANT: A low coffee table is between them.",
    "USER: Can you see a window? ASSISTANT: Yes, there is a large window on the far wall.",
    "USER: How tall is the cabinet? ASSISTANT: The cabinet is about two meters tall.",
    "USER: Is the cup to the left or right of the plate? ASSISTANT: The cup is to the right of the plate.",
    "USER: Which drawer is open? ASSISTANT: The top drawer of the dresser is open.",
]


def build_tokenizer(extra_corpus=()):
    """Train the byte-level BPE tokenizer on CORPUS (+ extra_corpus) and wrap it for transformers.

    extra_corpus: more text whose common words should become single tokens (the trained scene
    model adds its question templates, so its prompts and answers are short).

    The tokenizer itself prepends <s> (post-processor), like LLaMA's add_bos_token=True,
    so `tokenizer(text).input_ids[0] == bos_token_id` for any text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
        show_progress=False,
    )
    tok.train_from_iterator([*CORPUS, *extra_corpus], trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )


def _make_tokenizer_files_portable(out: pathlib.Path, tokenizer) -> None:
    """Make the saved tokenizer loadable by transformers 4.x too (LLaVA-3D's own code pins 4.x).

    transformers 5 saves tokenizer_class "TokenizersBackend" (a 5.x-only name) and no
    special_tokens_map.json. "PreTrainedTokenizerFast" means the same thing to both 4.x and 5.x.
    """
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    special = {
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "unk_token": tokenizer.unk_token,
        "pad_token": tokenizer.pad_token,
    }
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2, sort_keys=True) + "\n")


def write_sentencepiece_tokenizer(out_dir, extra_corpus=()):
    """Train a SentencePiece BPE model with LLaMA's settings on CORPUS (+ extra_corpus) and write it
    as LLaVA checkpoints built on Vicuna ship their tokenizer: tokenizer.model, tokenizer_config.json
    (LlamaTokenizer, legacy false) and special_tokens_map.json (pad = unk, as LLaVA saves it), no
    tokenizer.json. Returns the files' directory. Deterministic (one thread)."""
    import io

    import sentencepiece

    from adatoken3d_node.model.loader import FAST_TOKENIZER_FILE, SENTENCEPIECE_FILE

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([*CORPUS, *extra_corpus]),
        model_writer=model,
        vocab_size=VOCAB_SIZE,
        # LLaMA's tokenizer.model: BPE, bytes for unknown characters, digits apart, a dummy prefix,
        # no normalisation and no whitespace folding; ids <unk> 0, <s> 1, </s> 2, no pad piece.
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    (out / SENTENCEPIECE_FILE).write_bytes(model.getvalue())
    (out / FAST_TOKENIZER_FILE).unlink(missing_ok=True)
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": False,
        "model_max_length": 2048,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    special = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>", "unk_token": "<unk>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2, sort_keys=True) + "\n")
    return out


def cache_dir() -> pathlib.Path:
    """$ADATOKEN3D_CACHE, else $XDG_CACHE_HOME/adatoken3d, else ~/.cache/adatoken3d."""
    cache = os.environ.get("ADATOKEN3D_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "adatoken3d"
    )
    return pathlib.Path(cache)
