"""The support agent as it shipped: three bugs, each caught in production and promoted into cases.yaml.

    python agent_buggy.py --question "Where is my order ORD-1042?"
"""

import sys

from support_agent import Behaviour, main

BEHAVIOUR = Behaviour(
    # Bug 1 (tool_argument): the tool's schema names the argument order_id.
    order_arguments=lambda order_id: {"orderId": order_id},
    # Bug 2 (hallucination): cites the best document's rank ("doc-1"), not its id, which was never retrieved.
    cite=lambda documents: "doc-1",
    # Bug 3 (truncation): the summary budget is too small and the answer is cut mid-sentence.
    max_tokens=12,
)

if __name__ == "__main__":
    sys.exit(main(BEHAVIOUR))
