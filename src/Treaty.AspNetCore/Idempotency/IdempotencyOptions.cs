namespace Treaty.AspNetCore.Idempotency;

/// <summary>Settings of the <c>Idempotency-Key</c> middleware (see <see cref="IdempotencyServiceCollectionExtensions.AddTreatyIdempotency"/>).</summary>
public sealed class IdempotencyOptions
{
    /// <summary>The request header that carries the key. Default <c>Idempotency-Key</c>.</summary>
    public string HeaderName { get; set; } = IdempotencyDefaults.HeaderName;

    /// <summary>The longest accepted key, in characters (at most 255). Default 255.</summary>
    public int MaxKeyLength { get; set; } = IdempotencyDefaults.MaxKeyLength;

    /// <summary>
    /// How long a key (and the response stored under it) is kept; after that a request with the
    /// same key runs again. Default 24 hours, at most 72 hours.
    /// </summary>
    public TimeSpan KeyLifetime { get; set; } = IdempotencyDefaults.KeyLifetime;

    /// <summary>
    /// How long a request holds its key while it runs. A key still in flight after this (its
    /// request crashed, or is too slow) is taken over by the next request with the key; the first
    /// request's writes are then rolled back. Default 60 seconds.
    /// </summary>
    public TimeSpan LockTimeout { get; set; } = IdempotencyDefaults.LockTimeout;

    /// <summary>How often the background sweeper deletes expired keys. Default 5 minutes.</summary>
    public TimeSpan SweepInterval { get; set; } = IdempotencyDefaults.SweepInterval;

    /// <summary>Most expired keys the sweeper deletes in one short transaction. Default 1000.</summary>
    public int SweepBatchSize { get; set; } = IdempotencyDefaults.SweepBatchSize;

    /// <summary>
    /// Response headers stored with the response and sent again on a replay, besides
    /// <c>Content-Type</c> (always kept). Default <c>Location</c>.
    /// </summary>
    public ICollection<string> ReplayedHeaders { get; } = new List<string>(IdempotencyDefaults.ReplayedHeaders);

    /// <summary>The problems of these settings, or an empty list when they are usable.</summary>
    public IReadOnlyList<string> Validate()
    {
        var problems = new List<string>();
        if (string.IsNullOrWhiteSpace(HeaderName) || HeaderName.Any(c => c <= ' ' || c >= 127 || c == ':'))
        {
            problems.Add("IdempotencyOptions.HeaderName must be a header name (visible ASCII, no colon).");
        }

        if (MaxKeyLength is < 1 or > IdempotencyDefaults.MaxKeyLength)
        {
            problems.Add($"IdempotencyOptions.MaxKeyLength must be between 1 and {IdempotencyDefaults.MaxKeyLength}.");
        }

        if (LockTimeout <= TimeSpan.Zero)
        {
            problems.Add("IdempotencyOptions.LockTimeout must be positive.");
        }

        if (KeyLifetime <= TimeSpan.Zero || KeyLifetime > IdempotencyDefaults.MaxKeyLifetime)
        {
            problems.Add($"IdempotencyOptions.KeyLifetime must be positive and at most {IdempotencyDefaults.MaxKeyLifetime.TotalHours} hours.");
        }
        else if (KeyLifetime < LockTimeout)
        {
            problems.Add("IdempotencyOptions.KeyLifetime must not be shorter than LockTimeout.");
        }

        if (SweepInterval <= TimeSpan.Zero)
        {
            problems.Add("IdempotencyOptions.SweepInterval must be positive.");
        }

        if (SweepBatchSize < 1)
        {
            problems.Add("IdempotencyOptions.SweepBatchSize must be at least 1.");
        }

        if (ReplayedHeaders.Any(string.IsNullOrWhiteSpace))
        {
            problems.Add("IdempotencyOptions.ReplayedHeaders must not contain empty names.");
        }

        return problems;
    }
}

/// <summary>Every default of the idempotency middleware in one place.</summary>
public static class IdempotencyDefaults
{
    /// <summary>The header of the IETF draft "The Idempotency-Key HTTP Header Field".</summary>
    public const string HeaderName = "Idempotency-Key";

    /// <summary>The header set on a replayed response.</summary>
    public const string ReplayedHeaderName = "Idempotent-Replayed";

    /// <summary>Longest key, in characters (as Stripe).</summary>
    public const int MaxKeyLength = 255;

    /// <summary>Default key lifetime.</summary>
    public static readonly TimeSpan KeyLifetime = TimeSpan.FromHours(24);

    /// <summary>Longest accepted key lifetime.</summary>
    public static readonly TimeSpan MaxKeyLifetime = TimeSpan.FromHours(72);

    /// <summary>Default lock timeout of a key in flight.</summary>
    public static readonly TimeSpan LockTimeout = TimeSpan.FromSeconds(60);

    /// <summary>Default interval of the sweeper.</summary>
    public static readonly TimeSpan SweepInterval = TimeSpan.FromMinutes(5);

    /// <summary>Default most keys deleted per sweeper transaction.</summary>
    public const int SweepBatchSize = 1000;

    /// <summary>Default response headers replayed besides <c>Content-Type</c>.</summary>
    public static readonly IReadOnlyList<string> ReplayedHeaders = ["Location"];

    /// <summary>The table the kit keeps its keys in, in the participant's database.</summary>
    public const string TableName = "treaty_idempotency_keys";
}

/// <summary>The problem+json <c>type</c> URIs the middleware answers with.</summary>
public static class IdempotencyProblemTypes
{
    /// <summary>409: the key was used before with a different request (method, route or body).</summary>
    public const string KeyMismatch = "https://treaty.dev/problems/idempotency-key-mismatch";

    /// <summary>409: a request with the key is still running; retry after <c>Retry-After</c> seconds.</summary>
    public const string KeyInFlight = "https://treaty.dev/problems/idempotency-key-in-flight";

    /// <summary>400: the key is missing on an endpoint that requires it, empty, or too long.</summary>
    public const string InvalidKey = Treaty.Core.Contracts.ProblemTypes.Validation;
}
