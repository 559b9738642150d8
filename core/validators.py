from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.utils.translation import gettext as _


class CharacterClassValidator:
    """The password uses at least ``min_classes`` of: upper-case letters, lower-case letters, digits."""

    def __init__(self, min_classes: int = 2) -> None:
        self.min_classes = min_classes

    def validate(self, password: str, user: Any = None) -> None:
        classes = (
            any(c.isupper() for c in password),
            any(c.islower() for c in password),
            any(c.isdigit() for c in password),
        )
        if sum(classes) < self.min_classes:
            raise ValidationError(
                _("The password must mix at least two of: upper-case letters, lower-case letters, digits."),
                code="password_character_classes",
            )

    def get_help_text(self) -> str:
        return _("Use at least two of: upper-case letters, lower-case letters, digits.")
