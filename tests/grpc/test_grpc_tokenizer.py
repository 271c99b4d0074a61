"""Unpacking the tokenizer bundle a gRPC engine sends (GetTokenizer): the archive built by
the engine's own code (smg_grpc_servicer.tokenizer_bundle), its digest, unsafe archives."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest
from smg_grpc_servicer.tokenizer_bundle import TokenizerBundle

from router.tokenizer import HFTokenizer
from router.transports.grpc_tokenizer import TokenizerBundleError, unpack_bundle


def test_the_engines_bundle_unpacks_into_a_tokenizer_that_equals_the_original(tiny_llama: Path, tmp_path: Path) -> None:
    data, digest = TokenizerBundle.build(tiny_llama)
    directory = unpack_bundle(data, digest, tmp_path)
    assert directory == tmp_path / digest
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (directory / name).read_bytes() == (tiny_llama / name).read_bytes()
    fetched, original = HFTokenizer(directory), HFTokenizer(tiny_llama)
    chat = {"messages": [{"role": "user", "content": "Say hello 你好"}]}
    assert fetched.render_chat(chat) == original.render_chat(chat)
    assert fetched.encode_text("The quick brown fox", add_special_tokens=True) == original.encode_text(
        "The quick brown fox", add_special_tokens=True
    )
    # a second fetch of the same bundle (a restart) reuses the unpacked directory
    (directory / "marker").write_text("kept")
    assert unpack_bundle(data, digest, tmp_path) == directory and (directory / "marker").exists()


def test_a_digest_mismatch_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    data, digest = TokenizerBundle.build(tiny_llama)
    with pytest.raises(TokenizerBundleError, match="digest mismatch"):
        unpack_bundle(data[:-1] + bytes([data[-1] ^ 1]), digest, tmp_path)
    assert not any(tmp_path.iterdir())
    assert unpack_bundle(data, "", tmp_path) == tmp_path / digest  # no digest sent: not checked


def _zip(names: list[str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in names:
            zf.writestr(name, "{}")
    return buf.getvalue()


@pytest.mark.parametrize("name", ["../escape.json", "sub/tokenizer.json", "/abs.json"])
def test_paths_that_leave_the_directory_are_refused(name: str, tmp_path: Path) -> None:
    data = _zip(["tokenizer.json", name])
    with pytest.raises(TokenizerBundleError, match="plain file name"):
        unpack_bundle(data, hashlib.sha256(data).hexdigest(), tmp_path / "cache")
    assert not (tmp_path / "escape.json").exists() and not (tmp_path / "cache").exists()


def test_not_a_zip_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TokenizerBundleError, match="not a ZIP"):
        unpack_bundle(b"not a zip", "", tmp_path)


def test_model_path_is_smgs_flag_and_tokenizer_path_wins(tiny_llama: Path, tmp_path: Path) -> None:
    from router.app import RouterService
    from router.cli import build_parser, config_from_args

    other = tmp_path / "other"
    other.mkdir()
    (other / "tokenizer.json").write_bytes((tiny_llama / "tokenizer.json").read_bytes())
    for flags, chats in (
        (["--model-path", str(tiny_llama)], True),
        (["--model-path", str(tiny_llama), "--tokenizer-path", str(other)], False),
    ):
        config = config_from_args(build_parser().parse_args(["--worker-urls", "grpc://127.0.0.1:1", *flags]))
        tokenizer = RouterService(config).tokenizers.for_model("any")
        assert tokenizer is not None
        # the tiny model's directory has a chat template; `other` (tokenizer.json only) has none
        assert (tokenizer.render_chat({"messages": [{"role": "user", "content": "hi"}]}) is not None) is chats
