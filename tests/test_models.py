"""Model registry, towers, the GK module and the ablation switches, on micro configs."""

import math

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from cxrvlp.constants import CHEST_IMAGENOME_REGIONS
from cxrvlp.models import create_model, list_models, model_config
from cxrvlp.models.vision import GlobalBatchNorm2d, ImageEncoder
from cxrvlp.recipes.batch import PretrainCollator, attach_prompts, entity_names
from cxrvlp.text.parse import parse_report
from cxrvlp.text.prompts import prompts_from_triplets
from cxrvlp.text.tokenizer import load_tokenizer

MICRO = {
    "embed_dim": 16,
    "image": {"image_size": 64, "width": 32, "depth": 1, "heads": 2},
    "text": {"width": 32, "layers": 1, "heads": 2, "intermediate": 64},
    "image_report_encoder": {"layers": 1},
    "decoder": {"layers": 1},
    "gk": {"layers": 1, "heads": 2},
}

# The paper-size architectures take seconds each to build and step: the slow tier.
MODELS_BY_TIER = [
    name if name.endswith("-tiny") else pytest.param(name, marks=pytest.mark.slow)
    for name in list_models()
]


def _merge(base: dict, extra: dict) -> dict:
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for key, value in extra.items():
        if isinstance(value, dict):
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    return merged


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


def _model(tokenizer, **extra):
    torch.manual_seed(0)
    model = create_model("gkmvlp-tiny", vocab_size=len(tokenizer), **_merge(MICRO, extra))
    attach_prompts(model, tokenizer)
    return model


TEXTS = [
    "Small left pleural effusion.",
    "No acute cardiopulmonary process.",
    "Moderate cardiomegaly. No pneumothorax.",
    "Right upper lobe nodule.",
]


def _report_prompts(tokenizer, texts):
    prompts = [prompts_from_triplets(parse_report(text).triplets) for text in texts]
    return PretrainCollator(tokenizer, 64, report_prompts=12).prompt_tensors(prompts)


def _batch(tokenizer, size=4, image_size=64, prompt_texts=None):
    generator = torch.Generator().manual_seed(0)
    texts = TEXTS[:size]
    encoded = tokenizer(texts, padding="longest", return_tensors="pt")
    boxes = torch.tensor([[8.0, 8.0, 30.0, 56.0]]).repeat(len(CHEST_IMAGENOME_REGIONS), 1)
    boxes[1] = torch.tensor([34.0, 8.0, 56.0, 56.0])
    boxes[2] = float("nan")  # a region the detector did not find
    entities = len(entity_names())
    targets = torch.zeros(size, entities)
    targets[0, 3] = targets[2, 5] = 1.0
    return {
        "image": torch.randn(size, 1, image_size, image_size, generator=generator),
        "boxes": boxes[None].repeat(size, 1, 1),
        "input_ids": encoded["input_ids"],
        "attention_mask": encoded["attention_mask"],
        "entity_targets": targets,
        "entity_valid": torch.ones(size, entities, dtype=torch.bool),
        "study_key": torch.arange(size),
        "report_key": torch.arange(size),
        "step": 0,
        **_report_prompts(tokenizer, prompt_texts or texts),
    }


def test_registry_lists_the_three_sizes_and_rejects_unknown_names_and_keys():
    assert {"gkmvlp-tiny", "gkmvlp-small", "gkmvlp-base"} <= set(list_models())
    base = model_config("gkmvlp-base")
    assert (base.image.width, base.image.depth, base.image.patch_size) == (768, 12, 16)
    assert (base.text.width, base.text.layers) == (768, 12)
    with pytest.raises(KeyError, match="gkmvlp-tiny"):
        model_config("gkmvlp-huge")
    with pytest.raises(KeyError):
        model_config("gkmvlp-tiny", ["gk.enabeld=false"])


def test_forward_gives_every_loss_and_gradients_reach_every_trained_part(tokenizer):
    model = _model(tokenizer)
    output = model(_batch(tokenizer))
    assert set(output.losses) == {"itc", "itm", "lm", "ecls", "grounding"}
    assert all(torch.isfinite(value) for value in output.losses.values())
    output.loss.backward()
    for part in ("image_encoder", "text_encoder", "image_report_encoder", "decoder", "gk"):
        grads = [p.grad for p in getattr(model, part).parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), part


def test_gk_attention_is_a_distribution_over_found_regions(tokenizer):
    model = _model(tokenizer).eval()
    batch = _batch(tokenizer)
    with torch.no_grad():
        features = model.encode_image(batch["image"], batch["boxes"])
    grounding = features.grounding
    entities = len(model.entity_names)
    assert grounding.attention.shape == (4, entities, len(CHEST_IMAGENOME_REGIONS))
    assert torch.allclose(grounding.attention.sum(-1), torch.ones(4, entities), atol=1e-5)
    assert (grounding.attention[..., 2] == 0).all()  # the NaN region is masked out
    # z_fused is appended to the ViT tokens the report towers attend to.
    grid = model.image_encoder.grid
    assert features.tokens.shape[1] == 1 + grid * grid + entities


def test_ablation_switches_change_the_model_as_documented(tokenizer):
    no_gk = _model(tokenizer, gk={"enabled": False})
    assert no_gk.gk is None
    output = no_gk(_batch(tokenizer))
    assert "ecls" in output.losses  # ECLS then scores the global image embedding

    no_ecls = _model(tokenizer, losses={"ecls": 0.0})
    assert no_ecls.ecls_image_proj is None and "ecls" not in no_ecls(_batch(tokenizer)).losses

    patches = _model(tokenizer, gk={"region_features": False}).eval()
    with torch.no_grad():
        grounding = patches.encode_image(_batch(tokenizer)["image"]).grounding
    assert grounding.attends_to == "patches"
    assert grounding.attention.shape[-1] == patches.image_encoder.grid**2

    no_position = _model(tokenizer, gk={"prompts_with_position": False})
    assert no_position.gk.position_proj is None
    assert no_position.prompt_embeddings()[1] is None


def test_momentum_queue_fills_with_the_batch_features(tokenizer):
    model = _model(tokenizer, losses={"queue_size": 8})
    before = model.image_queue.clone()
    model(_batch(tokenizer))
    assert int(model.queue_pointer) == 4
    assert not torch.equal(model.image_queue[:4], before[:4])
    assert torch.equal(model.image_queue[4:], before[4:])
    assert model.id_queue[:4].tolist() == [0, 1, 2, 3]
    assert not any(p.requires_grad for p in model.image_encoder_m.parameters())


def test_vit_initial_weights_are_resampled_to_the_grid_and_folded_to_one_channel(tmp_path):
    source = VisionTransformer(img_size=32, patch_size=16, in_chans=3, embed_dim=32, depth=1,
                               num_heads=2, num_classes=10)  # fmt: skip
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    config = {"image_size": 64, "patch_size": 16, "channels": 1, "width": 32, "depth": 1,
              "heads": 2, "mlp_ratio": 4.0, "stem": "patch", "pool": "token"}  # fmt: skip
    encoder = ImageEncoder(config)
    from cxrvlp.engine.checkpoint import read_state_dict

    left = encoder.load_initial_weights(read_state_dict(path))
    assert left == []
    assert encoder.vit.pos_embed.shape == (1, 1 + 16, 32)
    folded = source.patch_embed.proj.weight.sum(dim=1, keepdim=True)
    assert torch.allclose(encoder.vit.patch_embed.proj.weight, folded)
    assert torch.equal(encoder.vit.blocks[0].mlp.fc1.weight, source.blocks[0].mlp.fc1.weight)


def test_global_batch_norm_matches_batch_norm_in_one_process():
    torch.manual_seed(0)
    x = torch.randn(6, 4, 5, 5) * 3 + 1
    reference, ours = torch.nn.BatchNorm2d(4), GlobalBatchNorm2d(4)
    ours.load_state_dict(reference.state_dict())
    assert torch.allclose(ours(x), reference(x), atol=1e-5)
    assert torch.allclose(ours.running_mean, reference.running_mean, atol=1e-6)
    assert torch.allclose(ours.running_var, reference.running_var, atol=1e-5)
    ours.eval()
    reference.eval()
    assert torch.allclose(ours(x), reference(x), atol=1e-6)


def test_itc_temperature_starts_at_the_configured_value(tokenizer):
    model = _model(tokenizer)
    assert math.exp(model.logit_scale.item()) == pytest.approx(1 / 0.07, rel=1e-5)


@pytest.mark.slow
def test_report_encoder_from_the_local_minilm_folder(tokenizer):
    from transformers import BertModel

    from cxrvlp.text.tokenizer import minilm_folder

    model = create_model(
        "gkmvlp-tiny",
        vocab_size=len(tokenizer),
        **_merge(MICRO, {"text": {"pretrained": "minilm"}}),
    )
    reference = BertModel.from_pretrained(str(minilm_folder()), add_pooling_layer=False)
    assert model.text_encoder.width == 384
    ours = model.text_encoder.bert.encoder.layer[0].attention.self.query.weight
    assert torch.equal(ours, reference.encoder.layer[0].attention.self.query.weight)
    attach_prompts(model, tokenizer)
    assert torch.isfinite(model(_batch(tokenizer)).loss)


def test_separate_knowledge_encoder(tokenizer):
    shared = _model(tokenizer)
    separate = _model(tokenizer, gk={"share_text_encoder": False})
    assert shared.knowledge_encoder is shared.text_encoder
    assert separate.knowledge_encoder is not separate.text_encoder
    assert not any(key.startswith("own_knowledge_encoder") for key in shared.state_dict())


def test_report_prompts_are_padded_per_report_with_present_ones_first(tokenizer):
    tensors = _report_prompts(tokenizer, TEXTS)
    valid, present = tensors["prompt_valid"], tensors["prompt_present"]
    # Report 1 states no finding the parser knows; report 2 states cardiomegaly present and
    # pneumothorax absent, present first.
    assert valid.sum(dim=1).tolist()[1] == 0
    assert valid[2].sum() == 2 and present[2].tolist()[:2] == [True, False]
    region = {name: index for index, name in enumerate(CHEST_IMAGENOME_REGIONS)}
    assert tensors["prompt_regions"][0, 0, region["left costophrenic angle"]]
    assert not tensors["prompt_regions"][0, 0, region["right costophrenic angle"]]
    effusion = entity_names().index("pleural effusion")
    assert tensors["entity_regions"][0, effusion, region["left costophrenic angle"]]
    assert tensors["entity_regions"].sum() == tensors["prompt_regions"][present].sum()
    # Each prompt points at its sentence as the report states it (side, no location: the
    # region is the typical one on that side) and at its bare form, without the side.
    sentences = tokenizer.batch_decode(tensors["prompt_ids"], skip_special_tokens=True)
    stated, bare = (sentences[row] for row in tensors["prompt_text"][0, 0].tolist())
    assert stated.replace(" :", ":") == "small left pleural effusion: present"
    assert bare.replace(" :", ":") == "small pleural effusion: present"


def test_report_prompts_reach_only_the_grounding_term(tokenizer):
    """The leakage rule: ITC, ITM, LM and ECLS are bit-identical whether the batch carries
    its own reports' prompts or other reports' prompts; the grounding term is not."""
    model = _model(tokenizer)
    paired = model(_batch(tokenizer))
    shuffled = model(_batch(tokenizer, prompt_texts=TEXTS[::-1]))
    for name in ("itc", "itm", "lm", "ecls"):
        assert torch.equal(paired.losses[name], shuffled.losses[name]), name
    assert not torch.isclose(paired.losses["grounding"], shuffled.losses["grounding"])


def test_only_present_prompts_chosen_sentences_are_encoded_and_the_term_is_unchanged(
    tokenizer, monkeypatch
):
    """The grounding term encodes one form of each present report prompt; encoding every
    sentence of the batch (as before) gives the same term and gradients up to rounding."""
    model = _model(tokenizer, losses={"itc": 0.0, "itm": 0.0, "lm": 0.0, "ecls": 0.0})
    batch = _batch(tokenizer)
    encoded_rows = []
    encode = model.encode_prompts

    def counting(ids, mask):
        encoded_rows.append(len(ids))
        return encode(ids, mask)

    def every_sentence(batch, chosen, needed):
        return counting(batch["prompt_ids"], batch["prompt_mask"])[chosen]

    results = []
    for queries in (None, every_sentence):
        if queries is not None:
            monkeypatch.setattr(model, "_needed_prompt_queries", queries)
        monkeypatch.setattr(model, "encode_prompts", counting)
        model.zero_grad()
        output = model(batch)
        output.loss.backward()  # the grounding term alone: the other weights are 0
        loss = output.losses["grounding"]
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((loss, grads))
    present = int((batch["prompt_valid"] & batch["prompt_present"]).sum())
    assert encoded_rows[0] <= present < encoded_rows[1] == len(batch["prompt_ids"])
    (loss, grads), (loss_all, grads_all) = results
    torch.testing.assert_close(loss, loss_all)
    assert grads.keys() == grads_all.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, grads_all[name], rtol=1e-4, atol=1e-7, msg=name)


def test_grounding_weight_zero_gives_the_knowledge_base_model_exactly(tokenizer):
    report = _model(tokenizer, losses={"grounding": 0.0})
    today = _model(tokenizer, gk={"prompts": "knowledge_base"}, losses={"grounding": 0.0})
    batch = _batch(tokenizer)
    assert "grounding" not in report(batch).losses
    assert torch.equal(report(batch).loss, today(batch).loss)


@pytest.mark.slow
def test_grounding_term_trains_the_prompt_attention_onto_the_named_region(tokenizer):
    model = _model(tokenizer, losses={"itc": 0.0, "itm": 0.0, "lm": 0.0, "ecls": 0.0})
    batch = _batch(tokenizer)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for step in range(25):
        batch["step"] = step
        loss = model(batch).losses["grounding"]
        first = loss.item() if first is None else first
        optimiser.zero_grad()
        model(batch).loss.backward()
        optimiser.step()
    assert loss.item() < 0.5 * first
    shuffled = model(_batch(tokenizer, prompt_texts=TEXTS[::-1])).losses["grounding"]
    assert shuffled.item() > loss.item()


def test_ecls_on_v_cls_scores_the_global_vector(tokenizer):
    model = _model(tokenizer, losses={"ecls_on": "v_cls"}).eval()
    batch = _batch(tokenizer)
    with torch.no_grad():
        features = model.encode_image(batch["image"], batch["boxes"])
        entities, _ = model.prompt_embeddings()
        scores = model.entity_scores(features, entities)
        features.grounding = None  # the same scores as a model without the GK module
        assert torch.equal(scores, model.entity_scores(features, entities))
    with pytest.raises(ValueError, match=r"losses\.ecls_on"):
        _model(tokenizer, losses={"ecls_on": "cls"})
    assert "grounding" not in _model(tokenizer, gk={"enabled": False})(batch).losses


@pytest.mark.parametrize("name", MODELS_BY_TIER)
def test_every_registered_model_builds_as_its_recipe_with_the_configured_sizes(name):
    from cxrvlp.models.registry import RECIPES, recipe

    config = model_config(name)
    assert config.recipe in RECIPES
    model = create_model(name)
    assert isinstance(model, recipe(config.recipe).MODEL)
    assert model.text_encoder.width == config.text.width
    assert model.image_encoder.image_size == config.image.image_size
    if config.image.get("arch", "vit") == "vit":
        assert model.image_encoder.width == config.image.width
    else:
        assert model.image_encoder.width == 2048  # timm's ResNet-50 features
    encoder = model.image_encoder
    assert encoder.grid * encoder.patch_size == config.image.image_size


def test_a_seeded_gkmvlp_tiny_gives_its_recorded_losses_and_embedding(tokenizer):
    # Recorded with torch 2.14.1 on the CPU: a change of any of these numbers is a change of
    # the model's arithmetic (initialisation, an op, a default), to be made on purpose.
    model = _model(tokenizer)
    batch = _batch(tokenizer)
    torch.manual_seed(1)  # dropout
    output = model(batch)
    expected = {"itc": 1.737531, "itm": 0.660746, "lm": 10.36339, "grounding": 3.329391,
                "ecls": 3.83742}  # fmt: skip
    assert {k: float(v) for k, v in output.losses.items()} == pytest.approx(expected, rel=1e-4)
    assert output.loss.item() == pytest.approx(19.928478, rel=1e-4)
    model.eval()
    with torch.no_grad():
        embedding = model.encode_image(batch["image"], batch["boxes"]).embedding[0, :3]
    assert embedding.tolist() == pytest.approx([-0.49383, -0.09304, 0.25266], abs=1e-4)


RECIPE_LOSSES = {"gkmvlp": {"itc", "itm", "lm", "grounding", "ecls"},
                 "asg": {"ira", "arsa", "irl", "erl"}}  # fmt: skip


@pytest.mark.parametrize("name", MODELS_BY_TIER)
def test_every_registered_model_trains_a_step_at_a_reduced_image_size(name, tmp_path):
    """Each architecture at its own widths and depths, 64 px images, through its recipe's
    collator: every loss term finite and gradients reaching both encoders."""
    from cxrvlp.models.registry import attach_prompts as attach_recipe_prompts
    from cxrvlp.models.registry import collator
    from cxrvlp.text.tokenizer import train_wordpiece
    from test_asg import REPORTS, _sample

    tokenizer = load_tokenizer(train_wordpiece(REPORTS * 3, tmp_path, vocab_size=200))
    torch.manual_seed(0)
    model = create_model(name, vocab_size=len(tokenizer), image={"image_size": 64}).train()
    attach_recipe_prompts(model, tokenizer)
    samples = [_sample(index, REPORTS[index]) for index in range(2)]
    output = model(collator(model, tokenizer, training=True)(samples))
    assert set(output.losses) == RECIPE_LOSSES[model_config(name).recipe]
    assert all(math.isfinite(float(value)) for value in output.losses.values())
    output.loss.backward()
    for tower in (model.image_encoder, model.text_encoder):
        assert sum(float(p.grad.abs().sum()) for p in tower.parameters() if p.grad is not None) > 0
