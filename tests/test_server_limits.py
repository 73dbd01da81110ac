"""Bounded work per connection and per request, on the real server process (`ragtune serve`,
the embedded engine, a real index): slow clients are cut off, a full queue answers 503 with
Retry-After, and queued work whose client left is dropped."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from tests.helpers import serving

pytestmark = pytest.mark.slow
QUESTION = {"question": "Who was the duke in the battle of Hastings?", "max_tokens": 1}
# Sampled with no stop string (not even the answer's default first line): an answer that takes a while
# on any engine (the default OpenVINO one answers QUESTION in well under a second)
SLOW = {"question": "Where is Normandy?", "max_tokens": 80, "temperature": 2.0, "seed": 7, "stop": []}


@pytest.fixture(scope="module")
def server(tmp_path_factory, squad_index):
    limited = {"RAGTUNE_GENERATION__MAX_QUEUE": "2", "RAGTUNE_SERVICE__HEADER_TIMEOUT_SECONDS": "1",
               "RAGTUNE_SERVICE__MAX_EMBEDDING_QUEUE": "1", "RAGTUNE_SERVICE__UPLOAD_TIMEOUT_SECONDS": "2",
               "RAGTUNE_SERVICE__ADMIN_API_KEY": "admin-key"}
    with serving(squad_index, tmp_path_factory.mktemp("limits"), **limited) as served:
        yield served


def post(url: str, body: dict, timeout: float = 120) -> httpx.Response:
    return httpx.post(f"{url}/ask", json=body, timeout=timeout)


def test_connections_that_never_finish_their_head_are_closed(server):
    sockets = []
    for i in range(40):
        s = socket.create_connection(("127.0.0.1", server.port))
        if i % 2:
            s.sendall(b"POST /ask HTTP/1.1\r\nHost: x\r\nContent-Type: app")  # a head sent at a slowloris pace
        sockets.append(s)
    time.sleep(1.0)
    for s in sockets[1::2]:
        s.sendall(b"l")  # still trickling: a byte does not buy more time
    time.sleep(1.5)
    for s in sockets:
        s.settimeout(2)
        try:  # closed by the server: an orderly end, or a reset when our last byte came after the close
            assert s.recv(1024) == b"", "the server should have closed a connection with no whole head after 1 s"
        except ConnectionResetError:
            pass
        s.close()
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_a_full_queue_answers_503_with_retry_after(server):
    results: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda: results.append(post(server.url, SLOW))) for _ in range(3)]
    for thread in threads:  # one runs, two wait (generation.max_queue = 2)
        thread.start()
        time.sleep(0.3)
    refused = post(server.url, QUESTION)
    assert refused.status_code == 503, refused.text
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "overloaded" and "generation.max_queue" in refused.json()["error"]["message"]
    for thread in threads:
        thread.join()
    assert [r.status_code for r in results] == [200, 200, 200]


def test_queued_work_whose_client_left_is_dropped(server):
    started = time.perf_counter()
    assert post(server.url, QUESTION).status_code == 200
    single = time.perf_counter() - started  # one short answer: mostly the prefill of a RAG-sized prompt
    started = time.perf_counter()
    assert post(server.url, SLOW).status_code == 200
    slow = time.perf_counter() - started

    running = threading.Thread(target=post, args=(server.url, SLOW))
    running.start()
    time.sleep(0.3)
    body = json.dumps(SLOW).encode()
    gone = []
    for _ in range(2):  # two clients queue behind it, then give up
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(b"POST /ask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        gone.append(s)
    time.sleep(0.3)
    for s in gone:
        s.close()
    started = time.perf_counter()
    assert post(server.url, QUESTION).status_code == 200
    waited = time.perf_counter() - started
    running.join()
    # It waits for the rest of the running answer and its own, not for the two abandoned ones (2 x slow more).
    assert waited < 1.5 * slow + single, f"waited {waited:.1f} s; a slow answer takes {slow:.1f} s, a short one {single:.1f} s"
    log = server.log_path.read_text()
    assert "Traceback" not in log


# Sampled noise with no stop string (not even the answer's default first line): no early end
LONG = {"question": "Where is Normandy?", "max_tokens": 400, "temperature": 2.0, "seed": 7, "stop": []}


def test_a_stream_whose_client_left_stops_generating(server):
    """The engine stops at the next token once the client is gone: the next request waits for
    that token, not for the 400 the abandoned one asked for."""
    started = time.perf_counter()
    assert post(server.url, QUESTION).status_code == 200
    single = time.perf_counter() - started
    with httpx.stream("POST", f"{server.url}/ask", json={**LONG, "stream": True}, timeout=120) as response:
        for line in response.iter_lines():
            if '"type": "delta"' in line:
                break  # generation is under way; now the client leaves
    started = time.perf_counter()
    assert post(server.url, QUESTION).status_code == 200
    waited = time.perf_counter() - started
    assert waited < single + 3, f"waited {waited:.1f} s; one answer takes {single:.1f} s"


def test_a_plain_request_whose_client_left_stops_generating(server):
    started = time.perf_counter()
    assert post(server.url, QUESTION).status_code == 200
    single = time.perf_counter() - started
    with pytest.raises(httpx.ReadTimeout):
        post(server.url, LONG, timeout=single + 2)  # the client gives up while the answer is being generated
    started = time.perf_counter()
    assert post(server.url, QUESTION).status_code == 200
    waited = time.perf_counter() - started
    assert waited < single + 3, f"waited {waited:.1f} s; one answer takes {single:.1f} s"


def test_embeddings_are_queued_one_at_a_time_and_a_full_queue_answers_503(server):
    """Many clients embedding at once: one runs, one waits (service.max_embedding_queue = 1), the rest
    are told to retry; a question asked meanwhile is not held behind them."""
    texts = [f"The harbour master of port {i} keeps the tide tables for the spring and neap tides. " * 8 for i in range(256)]
    body = {"model": "sentence-transformers/all-MiniLM-L6-v2", "input": texts}
    started = time.perf_counter()
    assert httpx.post(f"{server.url}/v1/embeddings", json=body, timeout=120).status_code == 200
    one = time.perf_counter() - started
    results: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda: results.append(httpx.post(f"{server.url}/v1/embeddings", json=body,
                                                                         timeout=120))) for _ in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    started = time.perf_counter()
    asked = post(server.url, QUESTION)
    during = time.perf_counter() - started
    for thread in threads:
        thread.join()
    statuses = sorted(r.status_code for r in results)
    assert statuses.count(200) >= 2 and statuses.count(503) >= 3, statuses
    refused = next(r for r in results if r.status_code == 503)
    assert int(refused.headers["retry-after"]) >= 1 and "service.max_embedding_queue" in refused.json()["error"]["message"]
    assert asked.status_code == 200
    assert during < 2 * one + 10, f"/ask took {during:.1f} s beside the embeddings; one embedding request takes {one:.1f} s"


def test_an_upload_sent_too_slowly_is_cut_off(server):
    """A multipart body trickling a byte at a time is answered 408 after service.upload_timeout_seconds."""
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(b"POST /admin/collections/slow/documents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-key\r\n"
              b"Content-Type: multipart/form-data; boundary=b0undary\r\nContent-Length: 100000\r\n\r\n"
              b'--b0undary\r\nContent-Disposition: form-data; name="files"; filename="a.md"\r\n\r\n')
    started = time.perf_counter()
    s.settimeout(0.5)
    answer = b""
    while time.perf_counter() - started < 10 and not answer:
        try:
            s.sendall(b"x")
            answer = s.recv(4096)
        except socket.timeout:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
    s.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.perf_counter() - started < 5
    assert b"service.upload_timeout_seconds" in answer
