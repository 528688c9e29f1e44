"""The built-in tools a model may call (--tools NAME): plain functions with a docstring that says what they take, as
TRL's tools= are."""

from __future__ import annotations

import ast
import operator

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def calculator(expression: str) -> str:
    """Evaluates an arithmetic expression of integers with +, -, * and parentheses.

    Args:
        expression: the expression, e.g. "347 * 29 - 512"
    """
    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        raise ValueError(f"calculator takes integers with +, -, * and parentheses, got {expression!r}")

    try:
        tree = ast.parse(str(expression).strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"calculator cannot read {expression!r}") from None
    return str(value(tree.body))
