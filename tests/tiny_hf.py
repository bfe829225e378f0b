"""Tiny random-initialised Hugging Face models built offline and saved to a folder, so tests exercise the
real `from_pretrained` path of the paper profile (each built from its model class's config, no download)."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant:{% endif %}")


def _bpe_tokenizer(corpus: list[str], vocab_size: int = 600):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(corpus * 5, trainers.BpeTrainer(vocab_size=vocab_size,
                                                          special_tokens=["<pad>", "<s>", "</s>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  model_input_names=["input_ids", "attention_mask"])  # 4.x: no token_type_ids
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_llm(out: Path, chats: list[tuple[list[dict], str]], steps: int = 120) -> Path:
    """A 2-layer Llama taught (a few seconds of Adam, at most `steps`, stopping once the answers are learnt)
    to answer each chat with its canned text, saved to `out` with its tokenizer. Random weights alone only
    babble; teaching it fixes what the proposer reads."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _bpe_tokenizer([a for _, a in chats] + [m["content"] for c, _ in chats for m in c])
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    seqs = [(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True),
             tok(answer + "</s>", add_special_tokens=False)["input_ids"]) for messages, answer in chats]
    length = max(len(p) + len(a) for p, a in seqs)
    ids = torch.full((len(seqs), length), tok.pad_token_id)  # one right-padded batch: a step is one forward
    labels = torch.full((len(seqs), length), -100)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, (p, a) in enumerate(seqs):
        ids[i, :len(p) + len(a)] = torch.tensor(p + a)
        labels[i, len(p):len(p) + len(a)] = torch.tensor(a)
        mask[i, :len(p) + len(a)] = 1
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        if loss.item() < 0.01:  # mean answer-token loss: greedy decoding reproduces every answer
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _bert_tokenizer(out: Path, words: list[str]):
    from transformers import BertTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz.,-"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(words)), *chars, *(f"##{c}" for c in chars)]
    (out / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    return BertTokenizerFast.from_pretrained(out)


def tiny_grounding_dino(out: Path, words: list[str], image_size: int = 64) -> Path:
    """GroundingDINO (Swin + BERT, ~0.4 M parameters) and its processor, saved to `out`. Feed it non-square
    images: a square one resizes to 64×64, whose coarsest feature level is 1×1 and fails GroupNorm."""
    import torch
    import transformers as T

    tok = _bert_tokenizer(out, words)
    backbone = T.SwinConfig(image_size=image_size, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                            num_heads=[1, 1, 2, 2], window_size=2, out_indices=[2, 3, 4])
    text = T.BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    cfg = T.GroundingDinoConfig(backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1,
                                decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2,
                                decoder_attention_heads=2, num_queries=20, num_feature_levels=4, encoder_n_points=2,
                                decoder_n_points=2, max_text_len=32)
    torch.manual_seed(0)
    T.GroundingDinoForObjectDetection(cfg).eval().save_pretrained(out)
    improc = getattr(T, "GroundingDinoImageProcessorPil", None) or T.GroundingDinoImageProcessor
    T.GroundingDinoProcessor(image_processor=improc(size={"shortest_edge": image_size, "longest_edge": 2 * image_size}),
                             tokenizer=tok).save_pretrained(out)
    return out


def tiny_sam(out: Path, image_size: int = 64) -> Path:
    """SAM (~40 k parameters) and its processor, saved to `out`."""
    import torch
    import transformers as T

    p = 8
    cfg = T.SamConfig(
        vision_config=T.SamVisionConfig(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                                        image_size=image_size, patch_size=p, window_size=4, global_attn_indexes=[1],
                                        mlp_dim=64, num_pos_feats=8),
        prompt_encoder_config=T.SamPromptEncoderConfig(hidden_size=16, image_size=image_size, patch_size=p,
                                                       mask_input_channels=4),
        mask_decoder_config=T.SamMaskDecoderConfig(hidden_size=16, mlp_dim=32, num_hidden_layers=2,
                                                   num_attention_heads=2, iou_head_hidden_dim=16))
    torch.manual_seed(0)
    T.SamModel(cfg).eval().save_pretrained(out)
    improc = getattr(T, "SamImageProcessorPil", None) or T.SamImageProcessor
    T.SamProcessor(image_processor=improc(size={"longest_edge": image_size},
                                          pad_size={"height": image_size, "width": image_size})).save_pretrained(out)
    return out
