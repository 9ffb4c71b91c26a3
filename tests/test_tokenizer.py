"""The tokenizer `instructkit pretrain` trains: exact round trips, and a line's first word spelled as
inside a line."""
import random

import pytest

from instructkit.models import load_tokenizer, train_tokenizer

TEXTS = ["copy the words : box moon cat\nbox moon cat", "reverse the words : bell coin\ncoin bell",
         "say the word box 3 times\nbox box box", "the moon is red . the cat is on the box ."] * 30


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=300)


def test_first_word_of_a_line_is_the_token_used_inside_a_line(tok):
    prompt = tok("copy the words : box moon cat\n", add_special_tokens=False)["input_ids"]
    response = tok("box moon cat", add_special_tokens=False)["input_ids"]
    # the response, tokenized on its own, repeats the prompt's last three tokens before the newline
    assert response == prompt[-4:-1]
    assert tok.convert_ids_to_tokens(response)[0] == "Ġbox"
    # inside one text a word after a newline is spelled the same way as after a space
    joint = tok("copy the words : box\nbox", add_special_tokens=False)["input_ids"]
    assert joint[-1] == joint[-3]
    assert tok.decode(response) == "box moon cat"
    assert tok.decode(prompt + response) == "copy the words : box moon cat\nbox moon cat"


def test_plain_byte_level_bpe_spells_the_first_word_differently():
    plain = train_tokenizer(TEXTS, vocab_size=300, line_start_space=False)
    first = plain("box moon", add_special_tokens=False)["input_ids"][0]
    inside = plain("a box", add_special_tokens=False)["input_ids"][-1]
    assert first != inside
    assert plain.decode(plain("box moon\nbox", add_special_tokens=False)["input_ids"]) == "box moon\nbox"


@pytest.mark.parametrize("text", ["", "\n", "a\n", "\n\n", "a\n\nb", "a\n b", " x", "  y\n  \n", "x\n \n",
                                  "é\nü\n\n", "tab\tthen\r\nnext", "box moon <|endoftext|>"])
def test_round_trip_on_edge_cases(tok, text):
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_round_trip_on_random_strings_and_after_save(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice(" \n\tab:é.\rbox") for _ in range(rng.randint(0, 14)))
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert loaded(text, add_special_tokens=False)["input_ids"] == ids
        assert loaded.decode(ids) == text, repr(text)
    assert tok("", add_special_tokens=False)["input_ids"] == []
