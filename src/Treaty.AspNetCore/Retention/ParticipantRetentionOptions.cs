namespace Treaty.AspNetCore.Retention;

/// <summary>Settings of the participant's retention service (<see cref="RetentionServiceCollectionExtensions.AddTreatyRetention"/>).
/// Defaults live in <see cref="ParticipantRetentionDefaults"/>.</summary>
public sealed class ParticipantRetentionOptions
{
    /// <summary>
    /// How long a barrier row is kept after it was recorded. Required. It must exceed the longest
    /// time the coordinator may still call this branch for the same transaction (its retry horizon,
    /// including an operator's manual retry): a call arriving after its row is gone runs again.
    /// </summary>
    public TimeSpan? BarrierAge { get; set; }

    /// <summary>How often the service looks for old rows.</summary>
    public TimeSpan Interval { get; set; } = ParticipantRetentionDefaults.Interval;

    /// <summary>Most rows one batch considers; each batch is one short local transaction.</summary>
    public int BatchSize { get; set; } = ParticipantRetentionDefaults.BatchSize;

    /// <summary>Pause between batches of one pass, so the handlers' own writes get the database.</summary>
    public TimeSpan Pause { get; set; } = ParticipantRetentionDefaults.Pause;

    /// <summary>Every problem with the settings; empty when they are usable.</summary>
    public IReadOnlyList<string> Validate()
    {
        var problems = new List<string>();
        if (BarrierAge is not { } age || age <= TimeSpan.Zero)
        {
            problems.Add("ParticipantRetentionOptions.BarrierAge is required and must be positive.");
        }

        if (Interval <= TimeSpan.Zero)
        {
            problems.Add("ParticipantRetentionOptions.Interval must be positive.");
        }

        if (BatchSize < 1)
        {
            problems.Add("ParticipantRetentionOptions.BatchSize must be at least 1.");
        }

        if (Pause < TimeSpan.Zero)
        {
            problems.Add("ParticipantRetentionOptions.Pause must not be negative.");
        }

        return problems;
    }
}

/// <summary>Every retention default in one place.</summary>
public static class ParticipantRetentionDefaults
{
    public static readonly TimeSpan Interval = TimeSpan.FromMinutes(1);
    public const int BatchSize = 500;
    public static readonly TimeSpan Pause = TimeSpan.FromMilliseconds(50);
}
