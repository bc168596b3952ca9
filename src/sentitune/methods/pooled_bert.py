"""BertForSequenceClassification reading the masked mean of the last hidden states instead of the
pooled [CLS] (methods/pooling.py says why). Imported when a model first switches to mean pooling, so
that importing the method registry does not import transformers."""

from __future__ import annotations

from transformers import BertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput


def mean_pool(hidden, mask):
    """Mean of `hidden` (batch x tokens x width) over the tokens where `mask` is 1.

    A mask longer than the hidden states (prefix tuning prepends its virtual tokens to the mask, not to
    the states) is read from its end: the states belong to the real tokens.
    """
    if mask is None:
        return hidden.mean(dim=1)
    mask = mask[:, -hidden.shape[1] :].to(hidden.dtype).unsqueeze(-1)
    # clamp: a row with no token (never produced by the tokenizer) gives zeros rather than NaN.
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class MeanPoolingBertForSequenceClassification(BertForSequenceClassification):
    """Same parameters as BertForSequenceClassification (the pooler stays, unused), so its weights load
    into either class; only the forward pass differs."""

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        **kwargs,
    ):
        kwargs.pop("return_dict", None)
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        logits = self.classifier(self.dropout(mean_pool(outputs.last_hidden_state, attention_mask)))
        # transformers' own loss for sequence classification: regression, single- or multi-label by
        # config.problem_type, exactly as the parent class computes it.
        loss = None if labels is None else self.loss_function(labels, logits, self.config)
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
