"""The database models, and the extensions that own them.

(Flask-Login ships no type hints, and mypy cannot follow ``db.Model`` as a
base class: hence the ``type: ignore`` comments.)
"""

from __future__ import annotations

from typing import Any

from flask_login import LoginManager, UserMixin  # type: ignore[import-untyped]
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
login_manager = LoginManager()


class User(UserMixin, db.Model):  # type: ignore[misc,name-defined]
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(40), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    items: Mapped[list[Item]] = relationship(back_populates="owner", order_by="Item.id")

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)


class Item(db.Model):  # type: ignore[misc,name-defined]
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    quantity: Mapped[int]
    owner_id: Mapped[int] = mapped_column(ForeignKey("user.id"))
    owner: Mapped[User] = relationship(back_populates="items")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "quantity": self.quantity}


@login_manager.user_loader  # type: ignore[untyped-decorator]
def load_user(user_id: str) -> User | None:
    return db.session.get(User, int(user_id))
