"""The grader trusts nothing the kernel can write, name or race.

The channel between the grader and the kernel is off the file system (requests ride
in the execute_request, outcomes come back on IOPub); everything that comes back is
checked, decoded, stripped and capped on the grader's side; the kernel's stdout and
stderr are not the grader's; the IOPub drain has a deadline; the feedback is written
atomically, never through a link. The fast tests here check each defence on its own;
the slow ones grade one hostile notebook per attack through the real sandbox.
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
import warnings
import zipfile
from pathlib import Path

import nbformat
import pytest
import torch

from grader import results as feedback
from grader.errors import GraderError
from grader.render import write_outputs
from grader.runner import InProcessRunner
from grader.sandbox import wire
from grader.sandbox.kernel import MAX_BATCH_BYTES, Limits, SandboxKernel, _Outcomes
from grader.sandbox.wire import UNSUPPORTED
from grader.sandbox.worker import OUTCOME_MIME
from grader.submit import DETAILS_CHARS, OUTPUT_CHARS, _sanitised

#: Escape sequences (erase the screen, colours, a window title, a hyperlink), a carriage return, a
#: backspace, a C1 CSI, a bidi override and a lone surrogate: what a submission may put in an error.
HOSTILE = "\x1b[2J\x1b[31mFULL MARKS\x1b[0m\x1b]0;pwned\x07\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\\r\x08\x9b1m\u202e\ud800"


# -- texts: decoded, stripped, capped ----------------------------------------------------------------


def test_clean_text_strips_escapes_and_controls_and_keeps_newlines_and_tabs():
    """Are CSI, OSC (titles, hyperlinks), C1, carriage returns, bidi overrides and lone surrogates removed?"""
    cleaned = wire.clean_text("a\tb\n" + HOSTILE + " end", 1000)
    assert cleaned == "a\tb\nFULL MARKSlink? end"
    assert all(ch in "\t\n" or (ord(ch) >= 32 and not 0x7f <= ord(ch) <= 0x9f) for ch in cleaned)
    cleaned.encode("utf-8")  # no lone surrogate left: printable and writable as UTF-8


def test_clean_text_decodes_invalid_utf8_and_caps():
    assert wire.clean_text(b"ok \xff\xfe\x1b[1m!", 100) == "ok \ufffd\ufffd!"
    head = wire.clean_text("x" * 10**7, 2000)
    assert head.startswith("x" * 2000) and len(head) < 2100 and "cut by the grader" in head
    tail = wire.clean_text("a" * 10**6 + "THE ERROR", 100, keep="tail")
    assert tail.endswith("THE ERROR") and len(tail) < 200


# -- values: loaded only if plain, small and uncompressed ---------------------------------------------


def _deflated(data: bytes) -> bytes:
    """The same torch.save archive with every member deflated (what a zip bomb looks like)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    return out.getvalue()


def _packed(header, body: bytes = b"") -> bytes:
    """A message in the outcomes' format with this header (a JSON value, or raw bytes) and body."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return wire.MAGIC + len(raw).to_bytes(8, "little") + raw + body


def test_unpack_refuses_torch_archives_pickles_and_oversized_data():
    """Is nothing but the grader's own format read: not a torch.save archive (plain, or deflated into a zip
    bomb: 1 GB of zeros would fit in 1 MB), not a bare pickle, nothing over the limit?"""
    plain = wire.pack({"status": "ok", "value": torch.zeros(1000)})
    assert torch.equal(wire.unpack_untrusted(plain)["value"], torch.zeros(1000))
    archive = wire.dumps({"status": "ok", "value": torch.zeros(10**6)})
    bomb = _deflated(archive)
    assert len(bomb) < 100_000
    torch.load(io.BytesIO(bomb), weights_only=True)  # torch itself would unpack it
    for foreign in (archive, bomb, b"\x80\x04K\x01.", b"", wire.MAGIC):
        with pytest.raises(wire.TransferRefused, match="transfer format"):
            wire.unpack_untrusted(foreign)
    with pytest.raises(wire.TransferRefused, match="limit"):
        wire.unpack_untrusted(plain, limit=1000)


def _tensor(dtype="float32", shape=(2,), offset=0, nbytes=8, device="cpu"):
    return {"x": [dtype, list(shape), offset, nbytes, device]}


@pytest.mark.parametrize("message, needle", [
    (wire.MAGIC + (10**6).to_bytes(8, "little") + b"{}", "cut header"),
    (_packed(b"{not json"), "not JSON"),
    (_packed(b"[" + b"9" * 10_000 + b"]"), "not JSON"),  # an integer past Python's 4,300 digits
    (_packed(b"[" * 200_000 + b"]" * 200_000), "not JSON"),  # past the C parser's recursion limit
    (_packed(json.loads("[" * 40 + "]" * 40)), "nested too deeply"),
    (_packed({"status": "ok"}), "does not know"),  # an untagged object
    (_packed({"d": {"a": 1}, "t": []}), "does not know"),  # two tags
    (_packed({"d": [1]}), "does not know"),
    (_packed({"t": {"a": 1}}), "does not know"),
    (_packed({"x": ["float32", [2], 0]}, bytes(8)), "malformed tensor"),
    (_packed(_tensor(dtype="complex64"), bytes(8)), "unknown dtype"),
    (_packed(_tensor(dtype="torch.float32"), bytes(8)), "unknown dtype"),
    (_packed(_tensor(shape=(-2,)), bytes(8)), "malformed shape"),
    (_packed(_tensor(shape=(True, 2)), bytes(8)), "malformed shape"),
    (_packed(_tensor(shape=[1] * 65, nbytes=4), bytes(4)), "malformed shape"),
    (_packed(_tensor(shape=(2.0,)), bytes(8)), "malformed shape"),
    (_packed(_tensor(), bytes(4)), "not in the message"),  # the body is shorter than the tensor
    (_packed(_tensor(offset=-4), bytes(8)), "not in the message"),
    (_packed(_tensor(offset=4), bytes(8)), "not in the message"),
    (_packed(_tensor(nbytes=-8), bytes(8)), "not in the message"),
    (_packed(_tensor(shape=(3,)), bytes(8)), "does not match its shape"),
    (_packed(_tensor(shape=(2**40, 2**40, 0, 7), nbytes=8), bytes(8)), "does not match its shape"),
    (_packed(_tensor(device="file:///etc/passwd"), bytes(8)), "unknown device"),
    (_packed(_tensor(device="cuda:0"), bytes(8)), "cannot use") if not torch.cuda.is_available() else
    (_packed(_tensor(device="cuda:999"), bytes(8)), "cannot use"),
], ids=["cut-header", "not-json", "long-int", "deep-json", "deep", "untagged", "two-tags", "dict-not-object",
        "tuple-not-list", "short-spec", "complex", "dtype-name", "negative-extent", "bool-extent", "65-dims",
        "float-extent", "short-body", "negative-offset", "past-end", "negative-size", "size-mismatch", "overflow",
        "device-path", "absent-device"])
def test_unpack_refuses_each_malformed_message_with_a_reason(message, needle):
    """Is each way a patched worker could break the format refused, with what was wrong, before any tensor exists?"""
    with pytest.raises(wire.TransferRefused, match=needle):
        wire.unpack_untrusted(message)


def test_unpack_copies_the_bytes_and_reads_bools_as_bools():
    """Are a tensor's bytes copied out of the message (not a view of it), and a bool byte of 2 read as True?"""
    message = _packed({"t": [_tensor(shape=(2,)), _tensor("bool", (3,), 8, 3)]},
                      torch.tensor([1.0, 2.0]).numpy().tobytes() + bytes([0, 1, 2]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when a tensor would share a read-only buffer
        floats, flags = wire.unpack_untrusted(message)
    assert flags.tolist() == [False, True, True] and flags.view(torch.uint8).tolist() == [0, 1, 1]
    assert floats.tolist() == [1.0, 2.0] and floats.is_contiguous()
    floats += 1  # writable, and its own memory: the message is unchanged
    assert wire.unpack_untrusted(message)[0].tolist() == [1.0, 2.0]


def test_pack_refuses_what_it_cannot_carry():
    """Is anything but plain data a TypeError in the worker (which then sends a TransferError), not a guess?"""
    class Sub(torch.Tensor):
        pass

    for value in (object(), {1: 2}, torch.ones(2).as_subclass(Sub), torch.empty(2, device="meta"),
                  torch.ones(2, dtype=torch.complex64), torch.ones(3).to_sparse(), torch.float32, b"bytes",
                  json.loads("[" * 40 + "]" * 40)):
        with pytest.raises(TypeError):
            wire.pack(value)


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
@pytest.mark.parametrize("make, needle", [
    (lambda: torch.empty(3, device="meta"), "meta device"),
    (lambda: torch.ones(3, dtype=torch.complex64), "complex tensor"),
    (lambda: torch.ones(3).to_sparse(), "sparse"),
    (lambda: torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8), "quantized"),
    (lambda: (torch.ones(2), torch.empty(2, device="meta")), "meta device"),
], ids=["meta", "complex", "sparse", "quantized", "meta-in-tuple"])
def test_unreturnable_tensors_become_markers_with_a_sentence(make, needle):
    """Are meta, complex, sparse and quantized results a marker naming what came back, from the worker?"""
    value = make()
    encoded = wire.encode(value)
    marker = encoded[-1] if isinstance(encoded, tuple) else encoded
    assert isinstance(marker, dict) and needle in marker[UNSUPPORTED]
    [outcome] = InProcessRunner({"f": make}).run([{"function": "f"}], [0])
    got = outcome["value"][-1] if isinstance(outcome["value"], tuple) else outcome["value"]
    assert outcome["status"] == "ok" and needle in got[UNSUPPORTED]


def test_outcomes_are_checked_again_on_the_grader_side():
    """Whatever a patched worker sends: unknown statuses, huge texts, a meta tensor, a malformed log."""
    assert wire.outcome_from_kernel({"status": "full marks"})["error_type"] == "TransferError"
    assert wire.outcome_from_kernel("ok")["error_type"] == "TransferError"
    assert wire.outcome_from_kernel({"status": "ok"})["error_type"] == "TransferError"
    huge = wire.outcome_from_kernel({"status": "error", "error_type": "E" * 10**6, "message": HOSTILE + "m" * 10**7,
                                     "traceback": "t" * 10**7, "refusals": ["r" * 10**6] * 1000})
    assert len(huge["message"]) < 2100 and "\x1b" not in huge["message"]
    assert len(huge["traceback"]) < 4100 and len(huge["error_type"]) < 200
    assert len(huge["refusals"]) == wire.MAX_REFUSALS and all(len(r) < 600 for r in huge["refusals"])
    meta = wire.outcome_from_kernel({"status": "ok", "value": torch.empty(2, device="meta")})
    assert "meta device" in meta["value"][UNSUPPORTED]
    assert wire.outcome_from_kernel({"status": "ok", "value": "x\x1b[31m"})["value"] == "x"
    bad_log = wire.outcome_from_kernel({"status": "ok", "value": 1, "model_calls": [[1, 2]]})
    assert bad_log["error_type"] == "TransferError"
    meta_log = {"status": "ok", "value": 1, "model_calls": [[{"batch": 1, "level": torch.empty(1, device="meta")}]]}
    assert wire.outcome_from_kernel(meta_log)["error_type"] == "TransferError"
    long_log = {"status": "ok", "value": 1, "model_calls": [[{"batch": 1}] * (wire.MAX_MODEL_CALLS + 1)]}
    assert "more than 100,000 times" in wire.outcome_from_kernel(long_log)["message"]
    honest_log = [[{"batch": 4, "level": torch.tensor(t)} for t in range(1000)] for _ in range(5)]
    kept = wire.outcome_from_kernel({"status": "ok", "value": 1, "model_calls": honest_log})["model_calls"]
    assert len(kept) == 5 and all(torch.equal(e["level"], torch.tensor(t)) for t, e in enumerate(kept[0]))


def _message(token: str, index, payload, mime: str = OUTCOME_MIME) -> dict:
    return {"msg_type": "display_data",
            "content": {"data": {mime: payload}, "metadata": {mime: {"token": token, "index": index}}}}


def _payload(outcome: dict) -> str:
    return base64.b64encode(wire.pack(outcome)).decode("ascii")


def test_only_this_batchs_outcomes_count_and_each_once():
    """Are messages with another token, a bad index, a repeated index or a foreign mimetype ignored?"""
    outcomes = _Outcomes("secret", 2)
    ok = _payload({"status": "ok", "value": 1})
    forged = _payload({"status": "ok", "value": 99})
    for msg in (_message("guess", 0, forged), _message("secret", 2, forged), _message("secret", -1, forged),
                _message("secret", True, forged), _message("secret", 0, forged, mime="text/plain"),
                {"msg_type": "stream", "content": {"text": "x"}}, {"msg_type": "display_data", "content": None}):
        outcomes.take(msg)
    assert outcomes.got == {}
    outcomes.take(_message("secret", 0, ok))
    outcomes.take(_message("secret", 0, forged))  # a second outcome for call 0 changes nothing
    assert outcomes.got[0]["value"] == 1 and 1 not in outcomes.got


def _reply(text) -> dict:
    return {"content": {"status": "ok", "user_expressions": {"outcomes": {"status": "ok", "data": {"text/plain": text}}}}}


def test_the_reply_carries_the_outcomes_again_with_the_same_checks():
    """Are the execute_reply's outcomes (immune to IOPub drops) read with the same checks, malformed ones ignored?"""
    ok, other = _payload({"status": "ok", "value": 1}), _payload({"status": "ok", "value": 2})
    outcomes = _Outcomes("t", 3)
    for text in (None, 12, f"{ok}", f"'0:{ok}'; import os", "'0:\\x1b[31m'", f"\"0:{ok}\""):
        outcomes.take_reply(_reply(text))
    outcomes.take_reply({"content": {"user_expressions": "x"}})
    assert outcomes.got == {}
    outcomes.take(_message("t", 1, other))  # already in hand from IOPub: the reply does not replace it
    outcomes.take_reply(_reply(f"'0:{ok};1:{ok};7:{ok};x:{ok};2:AAAA'"))
    assert outcomes.got[0]["value"] == 1 and outcomes.got[1]["value"] == 2
    assert outcomes.got[2]["error_type"] == "TransferError" and outcomes.complete()


def test_each_outcome_and_each_batch_are_capped_before_decoding():
    """Is an oversized payload, a batch over its total, or a payload that is not base64 a clear error?"""
    outcomes = _Outcomes("t", 8)
    outcomes.take(_message("t", 0, "A" * (wire.MAX_OUTCOME_BYTES * 4 // 3 + 8)))
    assert "too large" in outcomes.got[0]["message"]
    outcomes.take(_message("t", 1, "not base64!"))
    assert "not base64" in outcomes.got[1]["message"]
    outcomes.take(_message("t", 2, 12))
    assert outcomes.got[2]["error_type"] == "TransferError"
    outcomes.used = MAX_BATCH_BYTES - 10
    outcomes.take(_message("t", 3, _payload({"status": "ok", "value": torch.zeros(100)})))
    assert "together" in outcomes.got[3]["message"]
    bomb = base64.b64encode(_deflated(wire.dumps({"status": "ok", "value": torch.zeros(10**5)}))).decode()
    outcomes.used = 0
    outcomes.take(_message("t", 4, bomb))
    assert "could not be read back" in outcomes.got[4]["message"]


# -- what reaches results.json, the report and the terminal ------------------------------------------


def test_every_test_is_sanitised_and_capped_before_the_feedback():
    test = feedback.TestResult("2", "f: matches", "f", "property", False, 0.0, 1.0, HOSTILE + "o" * 10**6,
                      {"traceback": HOSTILE * 1000, "got": ["g" * 10**6] * 10, "plot": "iVBORw0KGgo="})
    test = _sanitised(test)
    assert len(test.output) <= OUTPUT_CHARS + 100 and "\x1b" not in test.output
    texts = [test.details["traceback"]] + test.details["got"]
    assert sum(len(t) for t in texts) <= DETAILS_CHARS + 11 * 100
    assert not any("\x1b" in t or "\ud800" in t for t in texts)
    assert test.details["plot"] == "iVBORw0KGgo="


# -- the feedback: atomic, never through a link --------------------------------------------------------


def _result(notebook: Path) -> feedback.GradingResult:
    test = feedback.TestResult("1", "the notebook runs", None, "execution", True, 0.0, 0.0, "ok")
    return feedback.GradingResult("q_sampler", str(notebook), [test], 0, "cpu", "test")


def test_feedback_replaces_links_and_fifos_and_refuses_a_linked_folder(tmp_path):
    """Does write_outputs replace a symlink or a FIFO at results.json without following or opening it?"""
    victim = tmp_path / "victim.ipynb"
    victim.write_text("original")
    out = tmp_path / "feedback"
    out.mkdir()
    (out / "results.json").symlink_to(victim)
    os.mkfifo(out / "report.html")
    done = threading.Thread(target=write_outputs, args=(_result(victim), nbformat.v4.new_notebook(), out), daemon=True)
    done.start()
    done.join(30)
    assert not done.is_alive(), "write_outputs blocked on a FIFO"
    assert victim.read_text() == "original"
    assert (out / "results.json").is_file() and not (out / "results.json").is_symlink()
    assert json.loads((out / "results.json").read_text())["tests"][0]["name"] == "the notebook runs"
    assert (out / "report.html").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "results.json", "victim.executed.ipynb"]
    linked = tmp_path / "linked"
    linked.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(GraderError, match="not a plain folder"):
        write_outputs(_result(victim), nbformat.v4.new_notebook(), linked)
    assert list((tmp_path / "elsewhere").iterdir()) == []


# -- through the real sandbox (the notebooks of these attacks are in test_attacks.py) ---------------------


@pytest.mark.slow
def test_the_drain_deadline_bounds_a_call_under_a_flood(tmp_path):
    """One batch of calls while a thread floods IOPub: answered, and within the call's budget."""
    limits = Limits(cell_timeout=10, call_timeout=3, batch_timeout=20)
    source = ("import sys, threading\ndef f(x):\n    return x + 1\n"
              "def flood():\n    while True:\n        print('x' * 100)\n        sys.stdout.flush()\n"
              "threading.Thread(target=flood, daemon=True).start()\n")
    with SandboxKernel(tmp_path, limits, []) as kernel:
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(source)]
        deadline = time.monotonic() + 120
        assert [r.status for r in kernel.run_notebook(nb, deadline)] == ["ok"]
        started = time.monotonic()
        outcomes = kernel.call({"calls": [{"function": "f", "args": [i]} for i in range(5)],
                                "seeds": list(range(5)), "call_timeout": 3}, deadline)
        seconds = time.monotonic() - started
    assert [o.get("value") for o in outcomes] == [1, 2, 3, 4, 5], outcomes
    assert seconds < limits.batch_timeout
