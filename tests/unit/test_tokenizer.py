"""Tokenizers (gptserve.engine.tokenizer): no id disappears from the text, streaming equals whole decoding."""
import pytest

from gptserve.engine.tokenizer import UNKNOWN, ByteTokenizer, HFTokenizer


def stream(tokenizer, ids, step=1):
    decoder = tokenizer.streaming()
    deltas = [decoder.push(ids[i:i + step]) for i in range(0, len(ids), step)]
    return deltas, "".join(deltas) + decoder.flush()


def test_byte_ids_past_255_stay_visible():
    tok = ByteTokenizer()
    assert tok.decode([72, 105, 300, 33]) == "Hi" + UNKNOWN + "!"
    assert tok.decode([18328] * 3) == UNKNOWN * 3  # gpt2-large's ids through the byte tokenizer: never ""


def test_byte_stream_holds_back_an_incomplete_character():
    tok = ByteTokenizer()
    ids = list("né✓".encode())  # 2- and 3-byte characters
    deltas, text = stream(tok, ids)
    assert text == "né✓" == tok.decode(ids)
    assert deltas == ["n", "", "é", "", "", "✓"]  # nothing is emitted mid-character
    _, cut = stream(tok, ids[:-1])  # ends mid-character: flushed as U+FFFD, not dropped
    assert cut == "né" + UNKNOWN


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    """A small byte-level BPE tokenizer.json (the GPT-2 kind) with <|endoftext|>, trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["hello world, the quick brown fox jumps over the lazy dog. naïve café ✓"] * 50,
                            trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return HFTokenizer(path)


def test_hf_stream_equals_whole_decoding(hf_tokenizer):
    text = "the lazy café ✓ jumps over hello world"
    ids = hf_tokenizer.encode(text)
    for step in (1, 2, 5):
        deltas, streamed = stream(hf_tokenizer, ids, step)
        assert streamed == text == hf_tokenizer.decode(ids)
        assert all(UNKNOWN not in d for d in deltas)


def test_hf_ids_past_its_vocabulary_stay_visible(hf_tokenizer):
    ids = hf_tokenizer.encode("hello") + [hf_tokenizer.vocab_size + 5] + hf_tokenizer.encode(" world")
    assert hf_tokenizer.decode(ids) == "hello" + UNKNOWN + " world"


def test_hf_end_token_and_text_bound(hf_tokenizer):
    assert hf_tokenizer.end_id == hf_tokenizer._tok.token_to_id("<|endoftext|>")
    longest = max(len(t.encode()) for t in hf_tokenizer._tok.get_vocab(True))
    assert hf_tokenizer.max_token_bytes == longest >= 2
    for token_id in range(hf_tokenizer.vocab_size):  # no token stands for more text than the bound
        assert len(hf_tokenizer.decode([token_id]).encode()) <= hf_tokenizer.max_token_bytes
