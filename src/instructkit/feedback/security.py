"""Accounts and credentials: argon2 password hashes, browser sessions with a CSRF token each, and
API tokens for programmatic labelers. Only hashes of session and API tokens are stored, so a copy of
the database does not let anyone in."""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from instructkit.feedback.db import ApiToken, User, WebSession, utcnow
from instructkit.feedback.labels import LabelError

ROLES = ("admin", "labeler")
USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
SESSION_DAYS = 14
MIN_PASSWORD = 8
_hasher = PasswordHasher()  # argon2id, the library's (RFC 9106) defaults


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def same(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two secrets (False if either is missing)."""
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())


NO_PASSWORD = "!"  # an account that signs in only with API tokens (never matches a password)


def create_user(db: Session, username: str, password: str | None, role: str = "labeler") -> User:
    """`password=None` makes a token-only account (a programmatic or simulated labeler)."""
    if not isinstance(username, str) or not USERNAME.match(username):
        raise LabelError("expected 1-64 letters, digits or . _ @ -", "username")
    if role not in ROLES:
        raise LabelError(f"expected one of {', '.join(ROLES)}", "role")
    if password is not None and (not isinstance(password, str) or len(password) < MIN_PASSWORD):
        raise LabelError(f"expected at least {MIN_PASSWORD} characters", "password")
    if db.scalar(select(User).where(User.username == username)) is not None:
        raise LabelError(f"user {username!r} already exists", "username")
    pw_hash = _hasher.hash(password) if password is not None else NO_PASSWORD
    user = User(username=username, password_hash=pw_hash, role=role, active=True)
    db.add(user)
    db.flush()
    return user


def set_password(user: User, password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise LabelError(f"expected at least {MIN_PASSWORD} characters", "password")
    user.password_hash = _hasher.hash(password)


def authenticate(db: Session, username: str, password: str) -> User | None:
    user = db.scalar(select(User).where(User.username == username))
    if user is None or not user.active:
        _hasher.hash("x" * MIN_PASSWORD)  # same work whether or not the user exists
        return None
    if user.password_hash == NO_PASSWORD:
        return None
    try:
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return user


def start_session(db: Session, user: User) -> tuple[str, WebSession]:
    """-> (cookie value, session row). Expired sessions of this user are cleared on the way."""
    now = utcnow()
    db.execute(delete(WebSession).where(WebSession.user_id == user.id, WebSession.expires_at < now))
    token = secrets.token_urlsafe(32)
    sess = WebSession(token_hash=sha256(token), user_id=user.id, csrf=secrets.token_urlsafe(32),
                      expires_at=now + timedelta(days=SESSION_DAYS))
    db.add(sess)
    db.flush()
    return token, sess


def session_user(db: Session, cookie: str | None) -> tuple[User, WebSession] | None:
    if not cookie:
        return None
    sess = db.scalar(select(WebSession).where(WebSession.token_hash == sha256(cookie)))
    if sess is None or sess.expires_at < utcnow():
        return None
    user = db.get(User, sess.user_id)
    return (user, sess) if user is not None and user.active else None


def end_session(db: Session, cookie: str | None) -> None:
    if cookie:
        db.execute(delete(WebSession).where(WebSession.token_hash == sha256(cookie)))


def create_token(db: Session, user: User, name: str = "api") -> str:
    """A new API token for `user`; the plain token is returned once and never stored."""
    token = "ik_" + secrets.token_urlsafe(32)
    db.add(ApiToken(user_id=user.id, name=(name or "api")[:64], token_hash=sha256(token)))
    db.flush()
    return token


def token_user(db: Session, token: str) -> User | None:
    row = db.scalar(select(ApiToken).where(ApiToken.token_hash == sha256(token)))
    if row is None:
        return None
    user = db.get(User, row.user_id)
    return user if user is not None and user.active else None
