"""cxrvlp against peer implementations at the same sizes, in one process, in interleaved rounds.

Run: .venv/bin/python benchmarks/peers.py [--rounds 5] [--threads 2] [--json OUT] [--small]
Needs the ``bench`` extra (open_clip): pip install -c constraints.txt -e '.[bench]'.

Three comparisons, all fp32 on the CPU, random initial weights (seeded), the sizes of
gkmvlp-small (``--small``: a few layers of width 64, to check the script in seconds):

1. ITC-only training step (forward, backward, AdamW step) on a batch of images and 80-token
   reports: GK-MVLP without the GK module and with only its ITC loss, against open_clip's
   ``CustomTextCLIP`` with its own ViT and text transformer at the same widths and depths,
   trained with open_clip's ``ClipLoss``. Neither side uses dropout or drop path (open_clip's
   towers have none; cxrvlp's are turned off for this comparison).
2. Report generation (beam search with a KV cache, a fixed number of new tokens): cxrvlp's
   ``generate_reports`` (what ``cxrvlp generate`` runs) on GK-MVLP without the GK module,
   against transformers' ``VisionEncoderDecoderModel.generate`` with a ViT encoder and a BERT
   decoder with cross-attention of the same sizes. Both times include encoding the images.
   Also cxrvlp's generation with the GK module on (no peer).
3. The full GK-MVLP training step (all five losses, GK module, knowledge prompts) and ASG's
   training step with the same towers, beside them (no peer).

Every round calls each side of a comparison once, one after the other, so a slow spell of a
shared machine falls on both; the table gives the median seconds per call and the ratio
peer / cxrvlp (above 1: cxrvlp is faster). Each side steps with its own library's AdamW:
cxrvlp's fused kernel (its engine's), torch's default for open_clip (its training script's).
Parameters are those that take part: for training,
the ones that got a gradient; for generation, the modules that run.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

# The peers are built from configs, never downloaded: fail rather than reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from omegaconf import DictConfig, OmegaConf

from pretrain_step import REPORT_TOKENS, asg_batch, gkmvlp_batch, matmul_peak_gflops
from timing import interleaved_medians

BASE_MODEL = "gkmvlp-small"
ASG_BASE_MODEL = "asg-vit-b16"  # ASG's ViT variant, given gkmvlp-small's towers below
# --small: the same architecture, narrow and shallow, for a quick end-to-end check.
SMALL_OVERRIDES = {
    "embed_dim": 32,
    "image": {"image_size": 64, "width": 64, "depth": 2, "heads": 2},
    "text": {"vocab_size": 1000, "width": 64, "layers": 2, "heads": 2, "intermediate": 256},
    "image_report_encoder": {"layers": 1},
    "decoder": {"layers": 2},
    "gk": {"heads": 2},
}
# Only the ITC term: the other loss weights are zero (ITM, LM and ECLS then build no graph),
# and without the GK module the grounding term is off too. open_clip's ViT and text
# transformer have no dropout or drop path, so cxrvlp's towers run without theirs here: both
# sides then do the same arithmetic.
ITC_ONLY = {
    "gk": {"enabled": False},
    "losses": {"itm": 0.0, "lm": 0.0, "ecls": 0.0},
    "image": {"drop_path": 0.0},
    "text": {"dropout": 0.0},
}
# The tower keys ASG takes over from GK-MVLP's config, so that both recipes train the same
# image and report encoders.
SHARED_TOWER_KEYS = {
    "image": ("image_size", "channels", "patch_size", "stem", "width", "depth", "heads",
              "mlp_ratio", "drop_path"),
    "text": ("vocab_size", "width", "layers", "heads", "intermediate", "max_length", "dropout"),
}  # fmt: skip
# Token ids of cxrvlp's WordPiece vocabulary ([PAD] 0, [CLS] 2, [SEP] 3); the peer decoder
# uses the same ones as its pad, start and end tokens.
PAD_ID, START_ID, STOP_ID = 0, 2, 3
# Added to the stop token's output bias in both decoders: random weights would otherwise
# end some beams after a few tokens, and the two sides would decode different lengths.
STOP_LOGIT_PENALTY = -1e4
TAG_TOKENS = 8  # ASG's tag-name prompts (as in pretrain_step.py)


@dataclass
class Timing:
    comparison: str
    side: str  # "cxrvlp", "peer", or "cxrvlp (no peer)"
    implementation: str
    parameters: int
    seconds: float


# ---- configs and shared pieces --------------------------------------------------------------
def base_config(small: bool) -> DictConfig:
    from cxrvlp.models.registry import model_config

    return model_config(BASE_MODEL, SMALL_OVERRIDES if small else None)


def build_cxrvlp(config: DictConfig, overrides: dict | None = None):
    """A cxrvlp model of ``config`` (a resolved GK-MVLP or ASG config), seeded."""
    from cxrvlp.models.registry import apply_overrides, model_from_config

    torch.manual_seed(0)
    return model_from_config(apply_overrides(config.copy(), overrides))


def asg_config(gkmvlp: DictConfig) -> DictConfig:
    """ASG's ViT config with the image and report towers of ``gkmvlp``."""
    from cxrvlp.models.registry import model_config

    towers = {
        section: {key: gkmvlp[section][key] for key in keys}
        for section, keys in SHARED_TOWER_KEYS.items()
    }
    # The tag decoder has the image width; its heads must divide it.
    towers["tags"] = {"heads": int(gkmvlp.image.heads)}
    return model_config(ASG_BASE_MODEL, towers)


def set_random_knowledge_prompts(model) -> None:
    """GK-MVLP encodes its 40 entity and 29 position prompts in every step: random ones of
    the configured length stand in for the tokenised knowledge base."""
    from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
    from cxrvlp.recipes.batch import entity_names

    length = int(model.config.gk.prompt_max_length)
    generator = torch.Generator().manual_seed(1)

    def prompts(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(5, model.vocab_size, (count, length), generator=generator)
        return ids, torch.ones(count, length, dtype=torch.long)

    names = entity_names()
    model.set_knowledge_prompts(names, prompts(len(names)), prompts(len(CHEST_IMAGENOME_REGIONS)))


def training_step(
    model: torch.nn.Module, loss: Callable[[], torch.Tensor], fused: bool
) -> Callable[[], None]:
    """One AdamW step of ``model`` on ``loss()``, with the fused AdamW kernel (as cxrvlp's
    engine steps) or torch's default one (as open_clip's training script steps). The
    gradients are cleared before, not after, the step, so that the last step's gradients show
    which parameters took part."""
    model.train()
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-5, fused=fused)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()

    return step


def trained_parameters(model: torch.nn.Module) -> int:
    """Parameters that got a gradient in the last step (those a loss reaches)."""
    return sum(p.numel() for p in model.parameters() if p.grad is not None)


def parameter_count(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for module in modules for p in module.parameters())


def random_images(batch: int, channels: int, size: int) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(2))


def ratio(rows: list[Timing]) -> float | None:
    """Peer seconds / cxrvlp seconds of one comparison (None without a peer)."""
    sides = {row.side: row.seconds for row in rows}
    if "peer" not in sides or "cxrvlp" not in sides:
        return None
    return sides["peer"] / sides["cxrvlp"]


# ---- 1. ITC-only training step --------------------------------------------------------------
def open_clip_model_config(config: DictConfig) -> dict:
    """The model config dict of open_clip's CustomTextCLIP with cxrvlp's towers: its own ViT
    (RGB input, as open_clip's patch embedding has it) and its own text transformer (not a
    Hugging Face one), bidirectional like cxrvlp's BERT report encoder and pooled at the first
    token; both projected to cxrvlp's embed_dim."""
    image, text = config.image, config.text
    return {
        "embed_dim": int(config.embed_dim),
        "vision_cfg": {
            "image_size": int(image.image_size),
            "patch_size": int(image.patch_size),
            "width": int(image.width),
            "layers": int(image.depth),
            "head_width": int(image.width) // int(image.heads),
            "mlp_ratio": float(image.mlp_ratio),
        },
        "text_cfg": {
            "context_length": REPORT_TOKENS,
            "vocab_size": int(text.vocab_size),
            "width": int(text.width),
            "heads": int(text.heads),
            "layers": int(text.layers),
            "mlp_ratio": int(text.intermediate) / int(text.width),
            "no_causal_mask": True,
            "pool_type": "first",
        },
    }


def compare_itc_step(config: DictConfig, batch_size: int, rounds: int) -> list[Timing]:
    import open_clip

    cxrvlp = build_cxrvlp(config, ITC_ONLY)
    # Set as in a real model; an ITC-only forward leaves them unencoded.
    set_random_knowledge_prompts(cxrvlp)
    cxrvlp_batch = gkmvlp_batch(cxrvlp, batch_size, cxrvlp.vocab_size)

    torch.manual_seed(0)
    peer = open_clip.CustomTextCLIP(**open_clip_model_config(config))
    images = random_images(batch_size, 3, int(config.image.image_size))
    texts = cxrvlp_batch["input_ids"]  # the same report tokens
    clip_loss = open_clip.ClipLoss()

    def peer_loss() -> torch.Tensor:
        image_features, text_features, logit_scale = peer(images, texts)
        return clip_loss(image_features, text_features, logit_scale)

    steps = {
        "cxrvlp": training_step(cxrvlp, lambda: cxrvlp(cxrvlp_batch).loss, fused=True),
        "peer": training_step(peer, peer_loss, fused=False),
    }
    seconds = interleaved_medians(steps, rounds)
    name = f"ITC-only training step, batch {batch_size}"
    return [
        Timing(name, "cxrvlp", "GK-MVLP, gk off, ITC loss only", trained_parameters(cxrvlp),
               seconds["cxrvlp"]),
        Timing(name, "peer", "open_clip CustomTextCLIP + ClipLoss", trained_parameters(peer),
               seconds["peer"]),
    ]  # fmt: skip


# ---- 2. report generation -------------------------------------------------------------------
class IdTokenizer:
    """The part of a tokenizer ``generate_reports`` uses; a "report" is its token ids, so the
    benchmark can check every report's length."""

    cls_token_id, sep_token_id, pad_token_id = START_ID, STOP_ID, PAD_ID

    def batch_decode(
        self, rows: list[list[int]], skip_special_tokens: bool = True
    ) -> list[list[int]]:
        return rows


def penalise_stop_token(output_bias: torch.Tensor) -> None:
    with torch.no_grad():
        output_bias[STOP_ID] += STOP_LOGIT_PENALTY


def vision_encoder_decoder(config: DictConfig):
    """transformers' VisionEncoderDecoderModel: a ViT encoder and a causal BERT decoder with
    cross-attention, each of the size of cxrvlp's image encoder and report decoder. The widths
    are equal, so no projection sits between them (cxrvlp has its image_to_text layer; the
    ViT's pooler, unused by generation but run by ViTModel, is of the same size)."""
    from transformers import (
        BertConfig,
        BertLMHeadModel,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTModel,
    )

    image, text = config.image, config.text
    encoder_config = ViTConfig(
        image_size=int(image.image_size),
        patch_size=int(image.patch_size),
        num_channels=int(image.channels),
        hidden_size=int(image.width),
        num_hidden_layers=int(image.depth),
        num_attention_heads=int(image.heads),
        intermediate_size=int(float(image.mlp_ratio) * int(image.width)),
        attn_implementation="sdpa",
    )
    decoder_config = BertConfig(
        vocab_size=int(text.vocab_size),
        hidden_size=int(text.width),
        num_hidden_layers=int(config.decoder.layers),
        num_attention_heads=int(text.heads),
        intermediate_size=int(text.intermediate),
        max_position_embeddings=max(512, int(text.max_length)),
        is_decoder=True,
        add_cross_attention=True,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = VisionEncoderDecoderModel(
        encoder=ViTModel(encoder_config), decoder=BertLMHeadModel(decoder_config)
    )
    model.config.decoder_start_token_id = START_ID
    model.config.pad_token_id = PAD_ID
    model.config.eos_token_id = STOP_ID
    return model.eval()


def report_length(ids: list[int]) -> int:
    """Tokens before the stop token (a row that stopped early is padded after it)."""
    return ids.index(STOP_ID) if STOP_ID in ids else len(ids)


def check_lengths(name: str, lengths: list[int], expected: int) -> None:
    if any(length != expected for length in lengths):
        raise RuntimeError(f"{name} decoded {lengths} tokens, not {expected} each")


def compare_generation(
    config: DictConfig, batch_size: int, beams: int, new_tokens: int, rounds: int
) -> list[Timing]:
    from transformers import GenerationConfig

    from cxrvlp.tasks.generation import generate_reports

    size, channels = int(config.image.image_size), int(config.image.channels)
    images = random_images(batch_size, channels, size)
    tokenizer = IdTokenizer()

    def cxrvlp_generation(overrides: dict | None):
        model = build_cxrvlp(config, overrides).eval()
        set_random_knowledge_prompts(model)
        penalise_stop_token(model.decoder.lm.cls.predictions.bias)

        @torch.no_grad()
        def generate() -> list[list[int]]:
            return generate_reports(
                model, tokenizer, images, beams=beams, max_new_tokens=new_tokens
            )

        return model, generate

    plain, plain_generate = cxrvlp_generation({"gk": {"enabled": False}})
    with_gk, gk_generate = cxrvlp_generation(None)

    peer = vision_encoder_decoder(config)
    penalise_stop_token(peer.decoder.cls.predictions.bias)
    settings = GenerationConfig(
        num_beams=beams,
        max_new_tokens=new_tokens,
        do_sample=False,
        use_cache=True,
        decoder_start_token_id=START_ID,
        bos_token_id=START_ID,
        eos_token_id=STOP_ID,
        pad_token_id=PAD_ID,
    )

    @torch.no_grad()
    def peer_generate() -> torch.Tensor:
        return peer.generate(pixel_values=images, generation_config=settings)

    # Both must decode exactly new_tokens tokens a report, or the times are not comparable.
    check_lengths("cxrvlp", [report_length(r) for r in plain_generate()], new_tokens)
    check_lengths("cxrvlp with GK", [report_length(r) for r in gk_generate()], new_tokens)
    peer_reports = peer_generate()[:, 1:].tolist()  # after the start token
    check_lengths("peer", [report_length(row) for row in peer_reports], new_tokens)

    seconds = interleaved_medians(
        {"cxrvlp": plain_generate, "peer": peer_generate, "gk": gk_generate}, rounds
    )
    name = f"generation, {batch_size} images, beam {beams}, {new_tokens} tokens"
    plain_modules = (plain.image_encoder, plain.image_to_text, plain.decoder)
    return [
        Timing(name, "cxrvlp", "GK-MVLP generate_reports, gk off",
               parameter_count(*plain_modules), seconds["cxrvlp"]),
        Timing(name, "peer", "transformers VisionEncoderDecoderModel (ViT + BERT)",
               parameter_count(peer), seconds["peer"]),
        Timing(name, "cxrvlp (no peer)", "GK-MVLP generate_reports, gk on",
               parameter_count(with_gk.image_encoder, with_gk.image_to_text, with_gk.decoder,
                               with_gk.gk, with_gk.knowledge_encoder), seconds["gk"]),
    ]  # fmt: skip


# ---- 3. full pre-training steps, no peer ----------------------------------------------------
def full_training_steps(config: DictConfig, batch_size: int, rounds: int) -> list[Timing]:
    from cxrvlp.constants import ASG_TAGS

    gkmvlp = build_cxrvlp(config)
    set_random_knowledge_prompts(gkmvlp)
    gkmvlp_inputs = gkmvlp_batch(gkmvlp, batch_size, gkmvlp.vocab_size)

    asg = build_cxrvlp(asg_config(config))
    generator = torch.Generator().manual_seed(1)
    asg.set_tag_prompts(
        torch.randint(5, asg.vocab_size, (len(ASG_TAGS), TAG_TOKENS), generator=generator),
        torch.ones(len(ASG_TAGS), TAG_TOKENS, dtype=torch.long),
    )
    asg_inputs = asg_batch(asg, batch_size, asg.vocab_size)

    steps = {
        "gkmvlp": training_step(gkmvlp, lambda: gkmvlp(gkmvlp_inputs).loss, fused=True),
        "asg": training_step(asg, lambda: asg(asg_inputs).loss, fused=True),
    }
    seconds = interleaved_medians(steps, rounds)
    name = f"full training step, batch {batch_size}"
    return [
        Timing(name, "cxrvlp (no peer)", "GK-MVLP, all five losses",
               trained_parameters(gkmvlp), seconds["gkmvlp"]),
        Timing(name, "cxrvlp (no peer)", "ASG, same towers, its four losses",
               trained_parameters(asg), seconds["asg"]),
    ]  # fmt: skip


# ---- report -------------------------------------------------------------------------------
def header(args: argparse.Namespace, config: DictConfig, peak: float) -> str:
    image, text = config.image, config.text
    sizes = (
        f"ViT width {image.width} x {image.depth} layers, {image.heads} heads, patch "
        f"{image.patch_size}, {image.image_size} px; report encoder {text.width} x "
        f"{text.layers} layers; report decoder {config.decoder.layers} layers; vocabulary "
        f"{text.vocab_size}; {REPORT_TOKENS} report tokens; embed dim {config.embed_dim}"
    )
    return "\n".join(
        [
            f"cxrvlp against peers: {BASE_MODEL}{' (--small)' if args.small else ''} sizes: "
            f"{sizes}.",
            f"fp32, {args.threads} threads, random weights (seeded), median of {args.rounds} "
            "interleaved rounds after one warm-up call each; fp32 matmul peak "
            f"{peak:.1f} GFLOP/s. On a shared machine the ratio is steadier than the seconds.",
            "Ratio: peer seconds / cxrvlp seconds (above 1: cxrvlp is faster). Params: "
            "trained (got a gradient) or run (generation).",
            f"Generation: the stop token's output bias is lowered by {-STOP_LOGIT_PENALTY:g} "
            "in both decoders, so no beam ends early; the script stops unless every report "
            f"on each side is {args.new_tokens} tokens.",
            f"Differences beyond size: cxrvlp's ViT takes {image.channels} channel(s), "
            "open_clip's 3. The ITC step runs without dropout and drop path on both sides "
            f"(cxrvlp's config: drop_path {image.drop_path}, dropout {text.dropout}); the full "
            "steps with them.",
        ]
    )


def table(rows: list[Timing]) -> str:
    lines = [
        f"{'comparison':<46}{'side':<18}{'implementation':<52}{'params M':>9}{'median s':>10}"
        f"{'ratio':>7}"
    ]
    by_comparison: dict[str, list[Timing]] = {}
    for row in rows:
        by_comparison.setdefault(row.comparison, []).append(row)
    for name, group in by_comparison.items():
        peer_ratio = ratio(group)
        for index, row in enumerate(group):
            shown_ratio = f"{peer_ratio:>7.2f}" if row.side == "peer" and peer_ratio else ""
            lines.append(
                f"{name if index == 0 else '':<46}{row.side:<18}{row.implementation:<52}"
                f"{row.parameters / 1e6:>9.2f}{row.seconds:>10.3f}{shown_ratio}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="training batch")
    parser.add_argument("--generation-batch", type=int, default=4, help="images decoded")
    parser.add_argument("--beams", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=60)
    parser.add_argument("--small", action="store_true", help="tiny towers: a quick check")
    parser.add_argument("--json", metavar="OUT", help="write the results here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = base_config(args.small)
    peak = matmul_peak_gflops()
    print(header(args, config, peak), flush=True)

    rows = compare_itc_step(config, args.batch, args.rounds)
    rows += compare_generation(
        config, args.generation_batch, args.beams, args.new_tokens, args.rounds
    )
    rows += full_training_steps(config, args.batch, args.rounds)
    print()
    print(table(rows))
    if args.json:
        results = {
            "base_model": BASE_MODEL,
            "small": args.small,
            "threads": args.threads,
            "rounds": args.rounds,
            "matmul_peak_gflops": peak,
            "config": OmegaConf.to_container(config),
            "open_clip_model_config": open_clip_model_config(config),
            "rows": [asdict(row) for row in rows],
            "ratios": {
                name: ratio([row for row in rows if row.comparison == name])
                for name in dict.fromkeys(row.comparison for row in rows)
            },
        }
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump(results, stream, indent=2)
            stream.write("\n")


if __name__ == "__main__":
    main()
