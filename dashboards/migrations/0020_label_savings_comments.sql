-- label_savings' column comments as streams/evaluation/savings.py now estimates:
-- the control slice in five parts by a hash of the item id, each part's
-- counterfactual taught the four others and tested on its own part; the policy's
-- model tested on every control item; per part, the target is the lower of the
-- two fitted accuracies at the labels both curves have seen, and the row holds
-- the means over the parts.

ALTER TABLE label_savings
    COMMENT COLUMN target_accuracy 'per part, the lower of the two fitted accuracies at the labels both curves have seen; the mean over the parts',
    COMMENT COLUMN policy_accuracy 'its accuracy now, on the control items',
    COMMENT COLUMN random_labels_seen 'labels each counterfactual has learned (the control slice outside its part)',
    COMMENT COLUMN random_accuracy 'the counterfactuals'' accuracy now, each on its own part of the control slice',
    COMMENT COLUMN n_eval 'control items both curves are tested on';
