using Microsoft.AspNetCore.Http;

namespace Treaty.AspNetCore.Idempotency;

/// <summary>What a request with an idempotency key does, given the record already stored for its key.</summary>
internal enum IdempotencyAction
{
    /// <summary>No live record: claim the key and run the handler.</summary>
    Run,

    /// <summary>Completed with the same fingerprint: send the stored response.</summary>
    Replay,

    /// <summary>The key belongs to a different request: 409.</summary>
    Mismatch,

    /// <summary>The same request is running and its lock holds: 409 with <c>Retry-After</c>.</summary>
    InFlight,

    /// <summary>The same request was in flight but its lock expired (it crashed): claim it and run.</summary>
    TakeOver,
}

/// <summary>The decision for one request; <see cref="RetryAfter"/> is set for <see cref="IdempotencyAction.InFlight"/>.</summary>
internal readonly record struct IdempotencyDecision(IdempotencyAction Action, TimeSpan RetryAfter = default);

/// <summary>What happens to the handler's writes and the key once the handler answered.</summary>
internal enum ResponseDisposition
{
    /// <summary>A final answer: commit the writes with the stored response.</summary>
    Store,

    /// <summary>A failure or a "try again": roll back the writes and free the key.</summary>
    Release,
}

/// <summary>The stored state of a key, as far as the decision needs it.</summary>
internal sealed record IdempotencyRecordState(string Fingerprint, bool Completed, DateTimeOffset LockedUntil, DateTimeOffset ExpiresAt);

/// <summary>The outcome of checking the key header.</summary>
internal enum KeyCheck
{
    Valid,
    Missing,
    Empty,
    TooLong,
    Multiple,
    InvalidCharacters,
}

/// <summary>
/// The pure rules of the idempotency middleware: no clock, no I/O. The middleware and the
/// deterministic simulation both call these.
/// </summary>
internal static class IdempotencyRules
{
    // RFC 8470; not among StatusCodes' constants
    private const int Status425TooEarly = 425;

    /// <summary>Decides what a request with <paramref name="fingerprint"/> does when <paramref name="existing"/> is stored for its key.</summary>
    public static IdempotencyDecision Decide(IdempotencyRecordState? existing, string fingerprint, DateTimeOffset now)
    {
        if (existing is null || existing.ExpiresAt <= now)
        {
            // an expired key is as good as absent, whether or not the sweeper got to it yet
            return new IdempotencyDecision(IdempotencyAction.Run);
        }

        if (!string.Equals(existing.Fingerprint, fingerprint, StringComparison.Ordinal))
        {
            return new IdempotencyDecision(IdempotencyAction.Mismatch);
        }

        if (existing.Completed)
        {
            return new IdempotencyDecision(IdempotencyAction.Replay);
        }

        if (existing.LockedUntil > now)
        {
            return new IdempotencyDecision(IdempotencyAction.InFlight, RetryAfter(existing.LockedUntil, now));
        }

        return new IdempotencyDecision(IdempotencyAction.TakeOver);
    }

    /// <summary>
    /// <c>Retry-After</c> for a key in flight: the time until its lock expires, rounded up to whole
    /// seconds (at least one). By then the key is either completed (a retry replays it) or free to
    /// take over; a client may retry sooner.
    /// </summary>
    public static TimeSpan RetryAfter(DateTimeOffset lockedUntil, DateTimeOffset now)
    {
        var remaining = lockedUntil - now;
        var seconds = Math.Max(1, (long)Math.Ceiling(remaining.TotalSeconds));
        return TimeSpan.FromSeconds(seconds);
    }

    /// <summary>
    /// Whether a response is a final answer to store (2xx, 3xx, and 4xx except 408, 425 and 429,
    /// which ask the client to try again) or a failure whose writes are rolled back (5xx, and those three).
    /// </summary>
    public static ResponseDisposition Classify(int statusCode) => statusCode switch
    {
        StatusCodes.Status408RequestTimeout or Status425TooEarly or StatusCodes.Status429TooManyRequests => ResponseDisposition.Release,
        >= 200 and < 500 => ResponseDisposition.Store,
        _ => ResponseDisposition.Release,
    };

    /// <summary>
    /// Checks the header values and returns the key. The draft makes the value a structured-field
    /// string (<c>"abc"</c>); a bare token (<c>abc</c>, as Stripe) is accepted too and means the same key.
    /// </summary>
    public static KeyCheck CheckKey(IReadOnlyList<string?> values, int maxLength, out string key)
    {
        key = string.Empty;
        if (values.Count == 0)
        {
            return KeyCheck.Missing;
        }

        if (values.Count > 1)
        {
            return KeyCheck.Multiple;
        }

        var value = values[0] ?? string.Empty;
        if (value.Length >= 2 && value[0] == '"' && value[^1] == '"')
        {
            value = value[1..^1];
        }

        if (value.Length == 0)
        {
            return KeyCheck.Empty;
        }

        if (value.Length > maxLength)
        {
            return KeyCheck.TooLong;
        }

        foreach (var c in value)
        {
            if (c < ' ' || c >= 127)
            {
                return KeyCheck.InvalidCharacters;
            }
        }

        key = value;
        return KeyCheck.Valid;
    }

    /// <summary>When a claim made at <paramref name="now"/> stops holding the key, and when the key expires.</summary>
    public static (DateTimeOffset LockedUntil, DateTimeOffset ExpiresAt) Claim(DateTimeOffset now, TimeSpan lockTimeout, TimeSpan keyLifetime) =>
        (now + lockTimeout, now + keyLifetime);
}
