from app import Note


async def test_a_note_is_created_and_read_back(client, session):
    created = await client.post("/notes", json={"body": "hello"})
    assert created.status_code == 201
    note_id = created.json()["id"]
    assert (await client.get(f"/notes/{note_id}")).json() == {"id": note_id, "body": "hello"}
    assert (await session.get(Note, note_id)).body == "hello"  # committed, and seen


async def test_each_test_starts_from_an_empty_table(client):
    assert (await client.get("/notes/1")).status_code == 404  # the first test's note is gone
