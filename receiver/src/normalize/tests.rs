use super::*;

fn ctx() -> Context<'static> {
    Context {
        endpoint: "test",
        received_at: "2026-01-01T00:00:00Z",
        objects: None,
    }
}

fn run(body: &str) -> Vec<Event> {
    normalize(body.as_bytes(), &ctx()).expect("normalizes")
}

#[test]
fn bodies_that_are_not_objects_are_rejected() {
    let reject = |body: &str| {
        normalize(body.as_bytes(), &ctx())
            .expect_err(body)
            .to_string()
    };
    assert!(reject("").contains("empty"));
    assert!(reject("  \n").contains("empty"));
    assert!(reject("{\"object\":").contains("not valid JSON"));
    assert!(reject("[{}]").contains("array"));
    assert!(reject("\"page\"").contains("string"));
    assert!(reject("42").contains("number"));
    assert!(reject("{} trailing").contains("not valid JSON"));
}

#[test]
fn envelope_problems_become_one_unknown_event() {
    let no_entry = run(r#"{"object":"page"}"#);
    assert_eq!(no_entry.len(), 1);
    assert_eq!(no_entry[0].kind, Kind::Unknown);
    assert_eq!(no_entry[0].raw.get(), r#"{"object":"page"}"#);

    let not_array = run(r#"{"object":"page","entry":{"id":"1"}}"#);
    assert_eq!(not_array[0].kind, Kind::Unknown);
    assert!(
        not_array[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("not an array")
    );

    let bad_entry = run(r#"{"object":"page","entry":[{"id":{"x":1},"changes":[]}]}"#);
    assert_eq!(bad_entry[0].kind, Kind::Unknown);

    assert!(
        run(r#"{"object":"page","entry":[]}"#).is_empty(),
        "an empty batch has no events"
    );
}

#[test]
fn raw_keeps_every_digit_and_string_whitespace() {
    let events = run(
        "{\"object\":\"page\",\"entry\":[{\"id\":\"1\",\"time\":1,\"changes\":[\n  {\"field\": \"feed\",\n   \"value\": {\"item\": \"status\", \"verb\": \"add\", \"message\": \"two  spaces\\n\\u00e4\", \"big\": 123456789012345678901234567890}}\n]}]}",
    );
    assert_eq!(
        events[0].raw.get(),
        r#"{"field":"feed","value":{"item":"status","verb":"add","message":"two  spaces\n\u00e4","big":123456789012345678901234567890}}"#
    );
    assert_eq!(events[0].kind, Kind::Post);
}

#[test]
fn ids_are_stable_and_distinct() {
    let body = r#"{"object":"page","entry":[{"id":"9","time":1,"changes":[{"field":"feed","value":{"item":"status","verb":"add","post_id":"9_1"}},{"field":"feed","value":{"item":"status","verb":"add","post_id":"9_2"}}]}]}"#;
    let first = run(body);
    let again = run(body);
    assert_eq!(first[0].id, again[0].id);
    assert_ne!(first[0].id, first[1].id);
    assert_eq!(first[0].id.len(), 64, "hash ids are hex SHA-256");
}

#[test]
fn whatsapp_message_and_status_ids_and_participants() {
    let body = r#"{"object":"whatsapp_business_account","entry":[{"id":"100","changes":[{"field":"messages","value":{
        "messaging_product":"whatsapp","metadata":{"display_phone_number":"15550001111","phone_number_id":"200"},
        "contacts":[{"profile":{"name":"Ada"},"wa_id":"15551234567"}],
        "messages":[{"from":"15551234567","id":"wamid.A","timestamp":"1700000000","type":"text","text":{"body":"hi"}}],
        "statuses":[{"id":"wamid.B","status":"failed","timestamp":"1700000001","recipient_id":"15557654321",
                     "errors":[{"code":131051,"title":"Unsupported"}]}]}}]}]}"#;
    let events = run(body);
    assert_eq!(events.len(), 2);
    let message = &events[0];
    assert_eq!(
        (message.id.as_str(), message.kind),
        ("wamid.A", Kind::Message)
    );
    assert_eq!(
        message.message.as_ref().and_then(|m| m.text.as_deref()),
        Some("hi")
    );
    let participant = message
        .conversation
        .as_ref()
        .and_then(|c| c.participant.as_ref())
        .expect("participant");
    assert_eq!(
        (participant.id.as_deref(), participant.name.as_deref()),
        (Some("15551234567"), Some("Ada"))
    );
    assert_eq!(message.occurred_at.as_deref(), Some("2023-11-14T22:13:20Z"));
    assert_eq!(
        message
            .business_phone
            .as_ref()
            .and_then(|p| p.id.as_deref()),
        Some("200")
    );
    let status = &events[1];
    assert_eq!(
        (status.id.as_str(), status.kind),
        ("wamid.B:failed", Kind::Status)
    );
    let value = status.status.as_ref().expect("status");
    assert_eq!(value.value, "failed");
    assert_eq!(value.errors[0].code, Some(131_051));
    let recipient = status
        .conversation
        .as_ref()
        .and_then(|c| c.participant.as_ref())
        .and_then(|p| p.id.as_deref());
    assert_eq!(recipient, Some("15557654321"));
}

#[test]
fn a_malformed_item_spoils_only_itself() {
    let body = r#"{"object":"whatsapp_business_account","entry":[{"id":"100","changes":[{"field":"messages","value":{
        "messages":[{"id":"wamid.bad","type":"text","text":5},{"id":"wamid.good","type":"text","text":{"body":"ok"}}]}}]}]}"#;
    let events = run(body);
    assert_eq!(
        events.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [Kind::Unknown, Kind::Message]
    );
    assert!(events[0].error.as_deref().unwrap_or("").contains("message"));
}

#[test]
fn undocumented_keys_are_unknown_with_a_note() {
    let messenger = run(
        r#"{"object":"page","entry":[{"id":"1","messaging":[{"sender":{"id":"2"},"recipient":{"id":"1"},"timestamp":1,"teleport":{}}]}]}"#,
    );
    assert_eq!(
        (messenger[0].kind, messenger[0].field.as_str()),
        (Kind::Unknown, "teleport")
    );
    assert_eq!(messenger[0].platform, Platform::Messenger);
}

#[test]
fn misplaced_object_and_field_are_read_from_the_entry() {
    let events = run(
        r#"{"entry":[{"id":"1","time":1745337174,"object":"whatsapp_business_account","field":"account_update","changes":[{"value":{"event":"PARTNER_APP_INSTALLED"}}]}]}"#,
    );
    assert_eq!(events[0].object, "whatsapp_business_account");
    assert_eq!(
        (events[0].field.as_str(), events[0].kind),
        ("account_update", Kind::AccountUpdate)
    );
}

#[test]
fn objects_outside_the_endpoint_are_kept_as_unknown() {
    let accepted = ["page".to_owned()];
    let ctx = Context {
        objects: Some(&accepted),
        ..ctx()
    };
    let body = br#"{"object":"instagram","entry":[{"id":"1","changes":[{"field":"comments","value":{"id":"c","text":"hi"}}]}]}"#;
    let events = normalize(body, &ctx).expect("normalizes");
    assert_eq!(events[0].kind, Kind::Unknown);
    assert!(
        events[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("instagram")
    );
}

#[test]
fn messenger_echo_participant_is_the_recipient() {
    let events = run(
        r#"{"object":"page","entry":[{"id":"1","time":1,"messaging":[{"sender":{"id":"PAGE"},"recipient":{"id":"USER"},"timestamp":1458668856463,"message":{"mid":"m.1","is_echo":true,"text":"hello"}}]}]}"#,
    );
    let echo = &events[0];
    assert_eq!(
        (echo.kind, echo.field.as_str(), echo.id.as_str()),
        (Kind::Echo, "message_echoes", "m.1")
    );
    let participant = echo
        .conversation
        .as_ref()
        .and_then(|c| c.participant.as_ref())
        .and_then(|p| p.id.as_deref());
    assert_eq!(participant, Some("USER"));
}

#[test]
fn changed_fields_yield_one_change_each() {
    let events = run(
        r#"{"object":"user","entry":[{"uid":"7","id":"7","time":1,"changed_fields":["email","feed"]}]}"#,
    );
    assert_eq!(events.len(), 2);
    assert!(
        events
            .iter()
            .all(|e| e.kind == Kind::Change && e.platform == Platform::Graph)
    );
    assert_ne!(events[0].id, events[1].id);
}

fn participant_of(event: &Event) -> (Option<&str>, Option<&str>) {
    let participant = event
        .conversation
        .as_ref()
        .and_then(|c| c.participant.as_ref());
    (
        participant.and_then(|p| p.id.as_deref()),
        participant.and_then(|p| p.name.as_deref()),
    )
}

#[test]
fn the_author_comes_from_whichever_shape_meta_sent() {
    let events = run(r#"{"object":"page","entry":[{"id":"1","time":1,"changes":[
            {"field":"feed","value":{"item":"comment","verb":"add","post_id":"1_2","from":{"id":"F","name":"From"},"sender_id":"S","sender_name":"Sender"}},
            {"field":"feed","value":{"item":"photo","verb":"add","post_id":"1_3","sender_id":5,"sender_name":"Sender"}},
            {"field":"ratings","value":{"item":"comment","verb":"add","post_id":"1_4","sender_id":"S","reviewer_id":"R","reviewer_name":"Reviewer"}},
            {"field":"ratings","value":{"item":"rating","verb":"add","reviewer_id":"R","reviewer_name":"Reviewer"}}]}]}"#);
    assert_eq!(participant_of(&events[0]), (Some("F"), Some("From")));
    assert_eq!(participant_of(&events[1]), (Some("5"), Some("Sender")));
    // A comment on a review: the commenter acted, not the reviewer.
    assert_eq!(participant_of(&events[2]).0, Some("S"));
    assert_eq!(participant_of(&events[3]), (Some("R"), Some("Reviewer")));
    assert_eq!(
        events[2].media.as_ref().and_then(|m| m.id.as_deref()),
        Some("1_4")
    );
    assert!(events[3].media.is_none(), "a rating is not about a post");
}

#[test]
fn a_whatsapp_referral_from_a_post_names_no_ad() {
    let events = run(
        r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"messages":[
            {"from":"1555","id":"wamid.P","timestamp":"1","type":"text","text":{"body":"hi"},"referral":{"source_type":"post","source_id":"1_2","source_url":"https://fb.me/p"}},
            {"from":"1555","id":"wamid.A","timestamp":"1","type":"text","text":{"body":"hi"},"referral":{"source_type":"ad","source_id":"777","ctwa_clid":"C"}}]}}]}]}"#,
    );
    let post = events[0].referral.as_ref().expect("referral");
    assert_eq!(post.source.as_deref(), Some("post"));
    assert_eq!(post.ad_id, None, "a post id is not an ad id");
    assert_eq!(post.source_url.as_deref(), Some("https://fb.me/p"));
    let ad = events[1].referral.as_ref().expect("referral");
    assert_eq!(
        (ad.ad_id.as_deref(), ad.ctwa_clid.as_deref()),
        (Some("777"), Some("C"))
    );
}

#[test]
fn a_leadgen_change_without_value_has_no_lead() {
    let events =
        run(r#"{"object":"page","entry":[{"id":"1","time":1,"changes":[{"field":"leadgen"}]}]}"#);
    assert_eq!(events[0].kind, Kind::Lead);
    assert!(events[0].lead.is_none());
}

#[test]
fn depth_counts_arrays_and_objects_but_not_brackets_in_strings() {
    let nested = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
    assert!(check_depth(b"{}", 1).is_ok());
    assert!(check_depth(nested(128).as_bytes(), 128).is_ok());
    let err = check_depth(nested(129).as_bytes(), 128).expect_err("129 levels");
    assert_eq!(
        err.to_string(),
        "the body nests arrays and objects deeper than 128 levels (limits.max_json_depth); \
         Meta's payloads nest about 10"
    );
    // Brackets inside strings, escaped quotes included, are not nesting.
    let quoted = format!(r#"{{"a":"\"{}"}}"#, "[{".repeat(500));
    assert!(check_depth(quoted.as_bytes(), 2).is_ok());
    assert!(check_depth(br#"{"a":{"b":{}}}"#, 2).is_err());
}

/// The byte-by-byte definition of nesting that [`check_depth`] skips strings to compute
/// faster: both must agree on every input, JSON or not.
fn depth_bytewise(body: &[u8], limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return false;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

#[test]
fn the_depth_check_agrees_with_a_byte_by_byte_scan() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/meta");
    let mut bodies: Vec<Vec<u8>> = std::fs::read_dir(fixtures)
        .expect("own fixtures")
        .map(|entry| std::fs::read(entry.expect("fixture").path()).expect("fixture body"))
        .collect();
    assert!(bodies.len() > 100, "the own fixtures are there");
    // Short bodies of the characters that matter, so escapes, unterminated strings and
    // backslashes at the very end all occur (xorshift: the same bodies every run).
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..20_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = (state % 24) as usize;
        let body: Vec<u8> = (0..len)
            .map(|i| b"{}[]\"\\a"[((state >> (i * 2 % 60)) % 7) as usize])
            .collect();
        bodies.push(body);
    }
    for body in &bodies {
        for limit in [1, 2, 3, 5, 128] {
            assert_eq!(
                check_depth(body, limit).is_ok(),
                depth_bytewise(body, limit),
                "limit {limit}, body {}",
                String::from_utf8_lossy(body)
            );
        }
    }
}

/// The byte-by-byte definition of [`compact`]: whitespace outside strings dropped.
fn compact_bytewise(json: &str) -> String {
    let (mut out, mut in_string, mut escaped) = (String::new(), false, false);
    for c in json.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if matches!(c, ' ' | '\n' | '\r' | '\t') {
            continue;
        }
        out.push(c);
    }
    out
}

#[test]
fn compacting_agrees_with_a_byte_by_byte_scan() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/meta");
    let mut bodies = vec![
        r#"{"a" : "x \" y\\" , "b":[1, 2],"c":"\\"}"#.to_owned(),
        "[ \"\\\\\", \"tab\\t and spaces  \" ,\t\r\n {} ]".to_owned(),
        r#"{"text":"  leading and trailing  "}"#.to_owned(),
    ];
    for entry in std::fs::read_dir(fixtures).expect("own fixtures") {
        let body = std::fs::read_to_string(entry.expect("fixture").path()).expect("fixture");
        // Some own fixtures are deliberately not JSON.
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&body) else {
            continue;
        };
        bodies.push(serde_json::to_string_pretty(&value).expect("pretty"));
        bodies.push(body);
    }
    for body in &bodies {
        let raw = RawValue::from_string(body.clone()).expect("valid JSON");
        assert_eq!(compact(&raw).get(), compact_bytewise(body), "{body}");
    }
}

#[test]
fn an_unrecognized_message_type_is_a_message_with_its_type_carried() {
    let events = run(
        r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"9"},"contacts":[{"profile":{"name":"Ada"},"wa_id":"155"}],"messages":[{"from":"155","id":"wamid.H","timestamp":"1700000000","type":"hologram","hologram":{"frames":24}}]}}]}]}"#,
    );
    let event = &events[0];
    assert_eq!(event.kind, Kind::Message);
    assert_eq!(event.id, "wamid.H");
    assert_eq!(event.error, None);
    assert_eq!(event.occurred_at.as_deref(), Some("2023-11-14T22:13:20Z"));
    let message = event.message.as_ref().expect("message");
    assert_eq!(message.kind, "hologram");
    assert_eq!(participant_of(event), (Some("155"), Some("Ada")));
    assert_eq!(unrecognized_value(event), Some("messages.type"));
    assert!(event.raw.get().contains(r#""frames":24"#));
}

#[test]
fn an_unrecognized_preference_value_keeps_the_preference_kind() {
    let events = run(
        r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"user_preferences","value":{"user_preferences":[{"wa_id":"155","category":"marketing_messages","value":"signup","timestamp":1700000000}]}}]}]}"#,
    );
    let event = &events[0];
    assert_eq!(event.kind, Kind::Preference);
    assert_eq!(event.error, None);
    assert_eq!(
        event.status.as_ref().map(|s| s.value.as_str()),
        Some("signup")
    );
    assert_eq!(participant_of(event).0, Some("155"));
    assert_eq!(event.occurred_at.as_deref(), Some("2023-11-14T22:13:20Z"));
    assert_eq!(unrecognized_value(event), Some("user_preferences.value"));
    let stop = run(
        r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"user_preferences","value":{"user_preferences":[{"wa_id":"155","value":"stop","timestamp":1700000000}]}}]}]}"#,
    );
    assert_eq!(
        (stop[0].kind, unrecognized_value(&stop[0])),
        (Kind::Optout, None)
    );
    let none = run(
        r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"user_preferences","value":{"user_preferences":[{"wa_id":"155"}]}}]}]}"#,
    );
    assert_eq!(none[0].kind, Kind::Unknown, "a preference without a value");
}

#[test]
fn each_participant_of_a_group_status_is_its_own_event() {
    let events = run(
        r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"contacts":[{"profile":{"name":"Ada"},"wa_id":"155","user_id":"US.1"},{"user_id":"US.2"}],"statuses":[{"id":"wamid.G","status":"read","timestamp":"1700000000","recipient_id":"GROUP","recipient_type":"group","recipient_participant_id":"155","recipient_participant_user_id":"US.1"},{"id":"wamid.G","status":"read","timestamp":"1700000001","recipient_id":"GROUP","recipient_type":"group","recipient_participant_user_id":"US.2"}]}}]}]}"#,
    );
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].id, "wamid.G:read:US.1");
    assert_eq!(events[1].id, "wamid.G:read:US.2");
    for event in &events {
        let conversation = event.conversation.as_ref().expect("conversation");
        assert_eq!(conversation.id.as_deref(), Some("GROUP"));
        assert_eq!(
            event.group.as_ref().and_then(|g| g.id.as_deref()),
            Some("GROUP")
        );
    }
    assert_eq!(participant_of(&events[0]).0, Some("155"));
    assert_eq!(participant_of(&events[0]).1, Some("Ada"));
    assert_eq!(
        participant_of(&events[1]).0,
        Some("US.2"),
        "no number: the BSUID"
    );
}

#[test]
fn empty_phone_numbers_count_as_absent() {
    let events = run(
        r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"contacts":[{"profile":{"name":"G","username":"@g"},"wa_id":"","user_id":"US.7"}],"messages":[{"from":"","from_user_id":"US.7","id":"wamid.E","timestamp":"1700000000","type":"text","text":{"body":"hi"}}]}}]}]}"#,
    );
    let person = events[0]
        .conversation
        .as_ref()
        .and_then(|c| c.participant.as_ref())
        .expect("participant");
    assert_eq!(person.id.as_deref(), Some("US.7"));
    assert_eq!(person.user_id.as_deref(), Some("US.7"));
    assert_eq!(person.username.as_deref(), Some("@g"));
}

#[test]
fn a_user_id_change_names_the_person_by_the_new_ids() {
    let events = run(
        r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"messages":[{"id":"wamid.S","timestamp":"1700000000","type":"system","system":{"body":"changed","user_id":"US.NEW","type":"user_changed_user_id"}}]}}]}]}"#,
    );
    let event = &events[0];
    assert_eq!(event.kind, Kind::Message);
    assert_eq!(participant_of(event).0, Some("US.NEW"));
    let change = event.identity_change.as_ref().expect("identity change");
    assert_eq!(change.user_id.as_deref(), Some("US.NEW"));
}

#[test]
fn group_notifications_carry_the_group_and_the_people() {
    let events = run(
        r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"group_participants_update","value":{"groups":[{"timestamp":"1700000000","group_id":"G1","type":"group_participants_remove","removed_participants":[{"input":"155"},{"input":"US.2"}],"initiated_by":"business"},{"timestamp":"1700000001","group_id":"G1","type":"group_participants_add","reason":"invite_link","added_participants":[{"user_id":"US.3"}]}]}}]}]}"#,
    );
    assert_eq!(events.len(), 2, "one event per groups[] item");
    let removal = events[0].group.as_ref().expect("group");
    assert_eq!(events[0].kind, Kind::Group);
    assert_eq!(removal.id.as_deref(), Some("G1"));
    assert_eq!(removal.initiated_by.as_deref(), Some("business"));
    let removed: Vec<(&str, Option<&str>, Option<&str>)> = removal
        .participants
        .iter()
        .map(|m| {
            (
                m.change.as_str(),
                m.participant.id.as_deref(),
                m.participant.user_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        removed,
        [
            ("removed", Some("155"), None),
            ("removed", Some("US.2"), Some("US.2"))
        ]
    );
    assert!(
        events[0]
            .conversation
            .as_ref()
            .is_some_and(|c| c.participant.is_none()),
        "two people: no single participant"
    );
    let join = events[1].group.as_ref().expect("group");
    assert_eq!(join.initiated_by.as_deref(), Some("participant"));
    assert_eq!(participant_of(&events[1]).0, Some("US.3"));
    assert_ne!(events[0].id, events[1].id);
}

#[test]
fn renamed_username_field_stays_unknown_with_raw() {
    let events = run(
        r#"{"object":"whatsapp_business_account","entry":[{"id":"1","time":1700000000,"changes":[{"field":"phone_number_username_update","value":{"username":"acme","status":"approved"}}]}]}"#,
    );
    assert_eq!(events[0].kind, Kind::Unknown);
    assert!(events[0].raw.get().contains("acme"));
    let documented = run(
        r#"{"object":"whatsapp_business_account","entry":[{"id":"1","time":1700000000,"changes":[{"field":"business_username_update","value":{"display_phone_number":"155","username":"acme","status":"approved"}}]}]}"#,
    );
    assert_eq!(documented[0].kind, Kind::AccountUpdate);
    assert_eq!(
        documented[0]
            .business_phone
            .as_ref()
            .and_then(|p| p.username.as_deref()),
        Some("acme")
    );
}
