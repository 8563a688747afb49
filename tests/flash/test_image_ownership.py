"""firmware/image's split of a board's filesystem into the project's files
and the board's (project_owned, merge_filesystem) and the block-by-block
read of a littlefs image (read_littlefs_blocks), without a board."""

import json

import firmware.image as build

PROJECT = {"main.py": b"main", "supervisor.mpy": b"sup", "app_a/device.mpy": b"app1",
           "app_a/manifest.json": b"{}", "device.json": b'{"id": "psu-x", "password": "new"}', "ca.crt": b"CA2"}


def used(**extra):
    """A board's files: an older project's files, and what the app wrote."""
    files = {"main.py": b"main", "supervisor.mpy": b"sup", "app_a/device.mpy": b"app0", "app_a/manifest.json": b"{}",
             "device.json": b'{"id": "psu-x", "password": "old"}', "ca.crt": b"CA1", "config.json": b'{"version": 7}',
             "buf/00000001": b"t1", "signing.json": b"{}"}
    files.update(extra)
    return files


def test_a_board_that_never_switched_slots_gets_the_projects_first_app_and_keeps_its_files():
    merged, changed = build.merge_filesystem(used(), PROJECT)
    assert changed == ["app_a/device.mpy", "ca.crt", "device.json"]
    assert merged["app_a/device.mpy"] == b"app1" and merged["device.json"] == PROJECT["device.json"]
    assert merged["config.json"] == b'{"version": 7}' and merged["buf/00000001"] == b"t1" and "signing.json" in merged


def test_once_the_board_selected_a_slot_both_slots_are_its_own():
    board = used(**{"boot.json": b'{"active": "b"}', "app_b/device.mpy": b"ota"})
    merged, changed = build.merge_filesystem(board, PROJECT)
    assert changed == ["ca.crt", "device.json"]
    assert merged["app_a/device.mpy"] == b"app0" and merged["app_b/device.mpy"] == b"ota"
    assert merged["boot.json"] == b'{"active": "b"}'


def test_a_project_file_the_new_image_drops_goes_and_nothing_changes_when_all_match():
    project = {k: v for k, v in PROJECT.items() if k != "ca.crt"}  # plain MQTT now
    merged, changed = build.merge_filesystem(used(), project)
    assert "ca.crt" not in merged and "ca.crt" in changed
    again, changed = build.merge_filesystem(merged, project)
    assert again == merged and changed == []


def test_read_by_block_reads_only_what_littlefs_visits_and_gives_the_files():
    files = dict(PROJECT, **{"buf/%08d" % i: bytes([i]) * 300 for i in range(20)})
    vfs = build.partition("vfs")
    image = build.littlefs_image(files, vfs[4])
    seen = []

    def block(i):
        seen.append(i)
        return image[i * build.LFS_BLOCK:(i + 1) * build.LFS_BLOCK]

    assert build.read_littlefs_blocks(block, len(image)) == files
    assert 0 < len(set(seen)) < vfs[4] // build.LFS_BLOCK // 2


def test_a_key_the_station_brings_replaces_the_boards_trusted_key_and_keeps_its_security_version():
    board = used(**{"device.json": b'{"id": "psu-x", "signing_key": "04aa"}',
                    "signing.json": b'{"key": "04aa", "security_version": 3}'})
    rotated = dict(PROJECT, **{"device.json": b'{"id": "psu-x", "signing_key": "04bb"}'})
    merged, changed = build.merge_filesystem(board, rotated)
    assert json.loads(merged["signing.json"]) == {"key": "04bb", "security_version": 3}
    assert "signing.json" in changed and "device.json" in changed
    # a station that brings the key the board was flashed with leaves a handover to a newer key alone
    handed_over = dict(board, **{"signing.json": b'{"key": "04cc", "security_version": 3}'})
    same = dict(PROJECT, **{"device.json": b'{"id": "psu-x", "signing_key": "04aa"}'})
    merged, changed = build.merge_filesystem(handed_over, same)
    assert json.loads(merged["signing.json"])["key"] == "04cc" and "signing.json" not in changed
