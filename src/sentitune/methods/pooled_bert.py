"""BertForSequenceClassification reading the masked mean of the last hidden states instead of the
pooled [CLS] (methods/pooling.py says why). Imported when a model first switches to mean pooling, so
that importing the method registry does not import transformers."""

from __future__ import annotations

from transformers import BertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

from sentitune.methods.pooling import mean_pool


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
