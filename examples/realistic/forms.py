"""The forms (each with Flask-WTF's CSRF token)."""

from __future__ import annotations

from flask_wtf import FlaskForm  # type: ignore[import-untyped]
from wtforms import IntegerField, PasswordField, StringField  # type: ignore[import-untyped]
from wtforms.validators import (  # type: ignore[import-untyped]
    DataRequired,
    EqualTo,
    Length,
    NumberRange,
)


class LoginForm(FlaskForm):  # type: ignore[misc]
    username = StringField("Username", validators=[DataRequired(), Length(max=40)])
    password = PasswordField("Password", validators=[DataRequired()])


class RegisterForm(LoginForm):
    confirm = PasswordField("Repeat password", validators=[EqualTo("password")])


class ItemForm(FlaskForm):  # type: ignore[misc]
    name = StringField("Name", validators=[DataRequired(), Length(max=80)])
    quantity = IntegerField("Quantity", default=1, validators=[NumberRange(min=1, max=1000)])
