-- ===========================================================================
-- Every message's encoding on the air and the parts (segments) it takes:
-- messages.encoding ('gsm7' or 'ucs2') and messages.segments, generated from
-- the text, so every writer (the drains, broadcast(), the workers' replies,
-- an INSERT by hand) gets them and none can get them wrong.
--
-- The rule (src/segments.rs has the same, and tests/segments.rs checks the
-- two against each other on random texts): GSM-7 when every character is in
-- the GSM 03.38 default alphabet or its extension table, else UCS-2. One
-- part holds 160 septets or 70 UTF-16 units; a longer text goes in parts of
-- 153 septets or 67 units (the concatenation header takes the rest), filled
-- in order without cutting a character: an extension character costs two
-- septets, a character beyond the Basic Multilingual Plane (most emoji) two
-- UTF-16 units. An empty text is one part. The count is what the operator
-- bills, whichever way a gateway is told to concatenate.
--
-- These functions are here and not in schema/ because stored generated
-- columns depend on them: replacing one would leave every stored value
-- computed by the old rule. Changing the rule takes a new migration that
-- replaces the function and recomputes the columns.
--
-- Adding stored generated columns rewrites dbrouter.messages once (under an
-- exclusive lock: seconds per million rows); docs/OPERATIONS.md, Upgrading.
-- ===========================================================================

-- 'gsm7' or 'ucs2': does a bracket expression of the default alphabet and
-- the extension table match the whole text? (A regular expression, which
-- PostgreSQL compiles once per session: 0.15 us a text, where translate()
-- over the same 138 characters took 3.2 us.) Plain SQL, so PostgreSQL
-- inlines it into the column's expression.
CREATE FUNCTION dbrouter.encoding(body text)
 RETURNS text
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$
    SELECT CASE
        WHEN body ~ (
            -- the default alphabet (without the escape, 0x1B): '-' first,
            -- the ASCII letters and digits as ranges
            E'^[-@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !"#¤%&''()*+,./0-9:;<=>?¡A-ZÄÖÑÜ§¿a-zäöñüà'
            -- the extension table
            || E'\f^{}\\\\\\[~\\]|€]*$')
        THEN 'gsm7'
        ELSE 'ucs2'
    END
$function$;

-- The parts a text longer than one part's certain capacity takes,
-- counted character by character as the splitter fills its parts.
CREATE FUNCTION dbrouter.long_text_segments(body text)
 RETURNS integer
 LANGUAGE plpgsql
 IMMUTABLE PARALLEL SAFE
AS $function$
DECLARE
    gsm constant boolean := dbrouter.encoding(body) = 'gsm7';
    single constant integer := CASE WHEN gsm THEN 160 ELSE 70 END;
    multi constant integer := CASE WHEN gsm THEN 153 ELSE 67 END;
    -- the characters that cost two units: the extension table's (GSM-7),
    -- those beyond the Basic Multilingual Plane (UCS-2)
    wide constant text := CASE WHEN gsm THEN E'[\f^{}\\\\\\[~\\]|€]' ELSE '[\U00010000-\U0010FFFF]' END;
    parts integer := 1;
    used integer := 0;
    cost integer;
    c text;
BEGIN
    IF 2 * length(body) - length(regexp_replace(body, wide, '', 'g')) <= single THEN
        RETURN 1;
    END IF;
    FOREACH c IN ARRAY regexp_split_to_array(body, '') LOOP
        cost := 1 + (c ~ wide)::integer;
        IF used + cost > multi THEN
            parts := parts + 1;
            used := 0;
        END IF;
        used := used + cost;
    END LOOP;
    RETURN parts;
END
$function$;

-- The parts `body` takes on the air (see above). A text of at most 70
-- bytes (UTF-8) fits in one part whatever its encoding (at most 70 UTF-16
-- units, at most 140 septets) and is counted without a call; plain SQL, so
-- PostgreSQL inlines this into the column's expression.
CREATE FUNCTION dbrouter.segments(body text)
 RETURNS integer
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$
    SELECT CASE WHEN octet_length(body) <= 70 THEN 1 ELSE dbrouter.long_text_segments(body) END
$function$;

ALTER TABLE dbrouter.messages
    ADD COLUMN encoding text GENERATED ALWAYS AS (dbrouter.encoding(text)) STORED,
    ADD COLUMN segments integer GENERATED ALWAYS AS (dbrouter.segments(text)) STORED;

COMMENT ON COLUMN dbrouter.messages.encoding IS
    'gsm7 or ucs2: how the text goes on the air (dbrouter.encoding)';
COMMENT ON COLUMN dbrouter.messages.segments IS
    'the SMS parts the text takes on the air, per recipient (dbrouter.segments)';
