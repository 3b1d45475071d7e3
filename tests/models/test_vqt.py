import torch
import torch.nn.functional as F
from method_checks import added_parameters, trains_one_epoch, vit_b16

from conftest import tiny_backbone
from fgir.config import model_config
from fgir.models.vqt import QueryTunedViT, VQTConfig, build_vqt

CLASSES = 5


def make(queries=2, **config) -> QueryTunedViT:
    return QueryTunedViT(tiny_backbone(), CLASSES, VQTConfig(query_tokens=queries, **config), zero_init_head=False)


def block_with_context(block, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """One timm block as the reference runs it for VQT: every row queries, keys and values come from
    the layer's tokens only. Returns the queries' outputs."""
    attn = block.attn
    joined = torch.cat([queries, tokens], dim=1)
    hidden = block.norm1(joined)
    weight_q, weight_k, weight_v = attn.qkv.weight.chunk(3)
    bias_q, bias_k, bias_v = attn.qkv.bias.chunk(3)
    context = hidden[:, queries.shape[1]:]

    def heads(x):  # (B, S, D) -> (B, H, S, D / H)
        return x.reshape(x.shape[0], x.shape[1], attn.num_heads, -1).transpose(1, 2)

    q = heads(hidden @ weight_q.T + bias_q)
    k, v = heads(context @ weight_k.T + bias_k), heads(context @ weight_v.T + bias_v)
    scores = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(-1)
    mixed = (scores @ v).transpose(1, 2).flatten(2)
    joined = joined + attn.proj(mixed)
    joined = joined + block.mlp(block.norm2(joined))
    return joined[:, : queries.shape[1]]


def test_queries_summarise_each_layer_and_leave_the_backbone_unchanged():
    model = make(queries=2).eval()
    images = torch.randn(3, 3, 32, 32)
    outputs, tokens = model.summaries(images)
    plain = model.backbone.embed(images)
    for index, block in enumerate(model.backbone.blocks):
        queries = model.queries[index].expand(3, -1, -1)
        torch.testing.assert_close(outputs[index], block_with_context(block, queries, plain))
        plain = block(plain)
    torch.testing.assert_close(tokens, plain)  # the tokens never saw a query
    cls = F.normalize(model.backbone.norm(plain)[:, 0], dim=-1)
    features = torch.cat([F.normalize(output.flatten(1), dim=-1) for output in outputs] + [cls], dim=1)
    assert features.shape == (3, 2 * 2 * 32 + 32)
    logits = model(images)
    assert logits.shape == (3, CLASSES)
    torch.testing.assert_close(logits, model.head(features))


def test_gradients_reach_queries_head_and_cls_token_only():
    model = make(queries=2).train()
    model(torch.randn(4, 3, 32, 32)).logsumexp(dim=1).sum().backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == {"queries", "head.weight", "head.bias", "backbone.vit.cls_token"}
    assert (model.queries.grad.flatten(1).abs().sum(1) > 0).all()  # every layer's queries learn
    assert not model.backbone.blocks[0].training and model.query_dropout.training


def test_added_parameters_for_vit_b16_at_448():
    with torch.device("meta"):
        model = build_vqt(vit_b16(448), 200, model_config("vqt"))
    # Reference shapes: prompts (12, T, 768), Linear(768 + 12 * 768 * T, classes); T = 5.
    assert added_parameters(model) == {"queries": 12 * 5 * 768, "head": (768 + 12 * 5 * 768) * 200 + 200}
    assert sum(added_parameters(model).values()) == 9_415_880


def test_the_ila_tables_trainable_parameters_imply_five_queries_per_layer():
    # The five UFGIR heads the table's other rows imply: 1.7 M / 769 = 2,211 classes in all; with
    # them MPN-COV (d = 64) gives 4.85 M (table 4.9) and TransFG 37.14 M (table 37.2).
    classes, tasks = 2211, 5
    def total(t):
        return tasks * (12 * t * 768 + 768) + classes * (768 + 12 * t * 768 + 1)  # queries + CLS + heads
    assert min(range(1, 11), key=lambda t: abs(total(t) - 106.0e6)) == VQTConfig().query_tokens == 5
    assert abs(tasks * (768 * 64 + 128 + 768) + classes * (2080 + 1) - 4.9e6) < 0.1e6


def test_one_epoch_through_the_trainer(tiny_config):
    trains_one_epoch(tiny_config, "model.method=vqt", "model.vqt.query_tokens=2")
