using Treaty.Core.Contracts;
using Treaty.Core.Model;

namespace Treaty.Messaging;

/// <summary>
/// What the publisher says about one event, for the coordinator's view of its choreographed saga
/// (used only when the service reports, <see cref="ReportingBuilderExtensions.ReportTo"/>). Unset
/// values fall back to the per-type settings of <see cref="ChoreographyReportingOptions"/>.
/// </summary>
public sealed record PublishOptions
{
    /// <summary>Set on the event that ends the saga: completed (the transaction commits), compensated or failed (it aborts).</summary>
    public ChoreographyOutcome? Outcome { get; init; }

    /// <summary>How long the coordinator waits for the saga's next event before it flags it stuck.</summary>
    public TimeSpan? NextEventTimeout { get; init; }

    /// <summary>False: this event is not reported (not part of a saga the coordinator watches).</summary>
    public bool Report { get; init; } = true;
}

/// <summary>
/// How a service reports its published events to the coordinator
/// (<c>POST /api/v1/choreography/events</c>); defaults in <see cref="ChoreographyReportingDefaults"/>.
/// </summary>
public sealed class ChoreographyReportingOptions
{
    private readonly Dictionary<string, ChoreographyOutcome> _outcomes = new(StringComparer.Ordinal);
    private readonly Dictionary<string, TimeSpan> _timeouts = new(StringComparer.Ordinal);
    private readonly HashSet<string> _excluded = new(StringComparer.Ordinal);

    /// <summary>
    /// How long the coordinator should wait for the next event after one without an outcome; null
    /// leaves it to the coordinator's default (<c>ChoreographyTimeout</c>, 30 s).
    /// </summary>
    public TimeSpan? NextEventTimeout { get; set; }

    /// <summary>Events sent to the coordinator in one request (1 to 100).</summary>
    public int BatchSize { get; set; } = ChoreographyReportingDefaults.BatchSize;

    /// <summary>How often the reporter looks for unreported events when no commit nudged it.</summary>
    public TimeSpan PollInterval { get; set; } = ChoreographyReportingDefaults.PollInterval;

    /// <summary>The first retry's delay while the coordinator cannot be reached; it doubles up to <see cref="MaxRetryDelay"/>.</summary>
    public TimeSpan RetryDelay { get; set; } = ChoreographyReportingDefaults.RetryDelay;

    /// <summary>The longest delay between two tries of one report.</summary>
    public TimeSpan MaxRetryDelay { get; set; } = ChoreographyReportingDefaults.MaxRetryDelay;

    /// <summary>How long one request to the coordinator may take before it counts as failed (and is tried again).</summary>
    public TimeSpan RequestTimeout { get; set; } = ChoreographyReportingDefaults.RequestTimeout;

    /// <summary>Every event of <paramref name="type"/> ends its saga with <paramref name="outcome"/> (unless its <see cref="PublishOptions"/> say otherwise).</summary>
    public ChoreographyReportingOptions Outcome(string type, ChoreographyOutcome outcome)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(type);
        _outcomes[type] = outcome;
        return this;
    }

    /// <summary>After an event of <paramref name="type"/>, the coordinator waits <paramref name="timeout"/> for the next one.</summary>
    public ChoreographyReportingOptions NextEventTimeoutAfter(string type, TimeSpan timeout)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(type);
        CheckTimeout(timeout, nameof(timeout));
        _timeouts[type] = timeout;
        return this;
    }

    /// <summary>Events of <paramref name="type"/> are not reported (they belong to no saga the coordinator watches).</summary>
    public ChoreographyReportingOptions Exclude(string type)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(type);
        _excluded.Add(type);
        return this;
    }

    /// <summary>
    /// What is reported for one event of <paramref name="type"/>: the publisher's own options first,
    /// then the per-type settings, then the defaults. Null: not reported. An event with an outcome
    /// carries no timeout unless one was given for it (nothing follows the end of a saga).
    /// </summary>
    internal ReportedAs? Resolve(string type, PublishOptions? publish)
    {
        if (publish is { Report: false } || _excluded.Contains(type))
        {
            return null;
        }

        ChoreographyOutcome? outcome = publish?.Outcome ?? (_outcomes.TryGetValue(type, out var o) ? o : null);
        var timeout = publish?.NextEventTimeout
            ?? (_timeouts.TryGetValue(type, out var t) ? t : (TimeSpan?)null)
            ?? (outcome is null ? NextEventTimeout : null);
        if (timeout is { } given)
        {
            CheckTimeout(given, nameof(PublishOptions.NextEventTimeout));
        }

        return new ReportedAs(outcome?.ToWire(), timeout is { } ms ? (long)Math.Ceiling(ms.TotalMilliseconds) : null);
    }

    internal void Validate()
    {
        if (BatchSize is < 1 or > ChoreographyEventParser.MaxBatch)
        {
            throw new InvalidOperationException($"Choreography reporting: BatchSize must be 1 to {ChoreographyEventParser.MaxBatch}.");
        }

        if (PollInterval <= TimeSpan.Zero || RetryDelay <= TimeSpan.Zero || MaxRetryDelay < RetryDelay || RequestTimeout <= TimeSpan.Zero)
        {
            throw new InvalidOperationException("Choreography reporting: the delays must be positive (MaxRetryDelay ≥ RetryDelay).");
        }

        if (NextEventTimeout is { } timeout)
        {
            CheckTimeout(timeout, nameof(NextEventTimeout));
        }
    }

    /// <summary>The delay after the <paramref name="failures"/>-th failed try of a report: the coordinator's backoff, with equal jitter.</summary>
    internal TimeSpan Backoff(int failures, double random01) => failures < 1
        ? TimeSpan.Zero
        : Treaty.Core.Model.Backoff.Delay(failures, new RetryPolicy(int.MaxValue, (long)RetryDelay.TotalMilliseconds, (long)MaxRetryDelay.TotalMilliseconds), random01);

    // The coordinator refuses (400) a timeout outside 1 ms .. MaxTimeoutMs; refusing it here, at the
    // publish, beats a report that can never be delivered.
    private static void CheckTimeout(TimeSpan timeout, string name)
    {
        if (timeout <= TimeSpan.Zero || timeout.TotalMilliseconds > TreatyDefaults.MaxTimeoutMs)
        {
            throw new ArgumentOutOfRangeException(name, timeout, $"The next event's timeout must be more than 0 and at most {TreatyDefaults.MaxTimeoutMs} ms.");
        }
    }
}

/// <summary>The outcome and timeout an event is reported with (wire values).</summary>
internal readonly record struct ReportedAs(string? Outcome, long? TimeoutMs);

/// <summary>The defaults of <see cref="ChoreographyReportingOptions"/>.</summary>
public static class ChoreographyReportingDefaults
{
    /// <summary>100 events a request, the coordinator's maximum.</summary>
    public const int BatchSize = ChoreographyEventParser.MaxBatch;

    /// <summary>1 s.</summary>
    public static readonly TimeSpan PollInterval = TimeSpan.FromSeconds(1);

    /// <summary>200 ms, doubling.</summary>
    public static readonly TimeSpan RetryDelay = TimeSpan.FromMilliseconds(200);

    /// <summary>30 s.</summary>
    public static readonly TimeSpan MaxRetryDelay = TimeSpan.FromSeconds(30);

    /// <summary>30 s.</summary>
    public static readonly TimeSpan RequestTimeout = TimeSpan.FromSeconds(30);
}
