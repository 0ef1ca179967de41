"""POST /tokenize and /detokenize (vLLM's shapes: a prompt or chat messages in, token ids out)."""
from vllm.engine.processor import check_token_ids_in_vocab
from vllm.entrypoints.openai.errors import OpenAIError
from vllm.entrypoints.openai.protocol import (DetokenizeRequest, DetokenizeResponse,
                                              TokenizeChatRequest, TokenizeCompletionRequest,
                                              TokenizeResponse)
from vllm.entrypoints.openai.request_body import parse_json_object, validate
from vllm.entrypoints.openai.serving_engine import OpenAIServing


class OpenAIServingTokenization(OpenAIServing):

    def tokenize(self, raw_body: bytes) -> TokenizeResponse:
        data = parse_json_object(raw_body)
        if "messages" in data:
            chat = validate(data, TokenizeChatRequest)
            self.resolve_model_name(chat.model)
            text, token_ids = self.render_chat(chat.messages, chat.add_generation_prompt,
                                               chat.chat_template_kwargs)
            if chat.add_special_tokens:
                token_ids = self.tokenizer.encode(text, add_special_tokens=True)
        else:
            request = validate(data, TokenizeCompletionRequest)
            self.resolve_model_name(request.model)
            self.check_prompt_text(request.prompt)
            token_ids = self.tokenizer.encode(request.prompt,
                                              add_special_tokens=request.add_special_tokens
                                              is not False)
        return TokenizeResponse(count=len(token_ids), max_model_len=self.max_model_len,
                                tokens=token_ids)

    def detokenize(self, raw_body: bytes) -> DetokenizeResponse:
        request = validate(parse_json_object(raw_body), DetokenizeRequest)
        self.resolve_model_name(request.model)
        try:
            check_token_ids_in_vocab(request.tokens, self.engine.model_config.vocab_size)
        except ValueError as error:
            raise OpenAIError(str(error), param="tokens") from None
        return DetokenizeResponse(prompt=self.tokenizer.decode(request.tokens))
