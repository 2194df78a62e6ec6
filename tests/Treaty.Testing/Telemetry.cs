using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;
using Microsoft.Extensions.Logging;

namespace Treaty.Testing;

/// <summary>
/// Records every finished span of the named ActivitySources (all sources when none are named).
/// ActivityListeners are process-wide: spans of other tests' coordinators arrive too, so look
/// spans up by their <c>treaty.gid</c> tag or trace id.
/// </summary>
public sealed class SpanRecorder : IDisposable
{
    private readonly ActivityListener _listener;
    private readonly ConcurrentQueue<Activity> _stopped = new();

    public SpanRecorder(params string[] sources)
    {
        _listener = new ActivityListener
        {
            ShouldListenTo = source => sources.Length == 0 || sources.Contains(source.Name),
            Sample = static (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = _stopped.Enqueue,
        };
        ActivitySource.AddActivityListener(_listener);
    }

    public IReadOnlyList<Activity> All => [.. _stopped];

    /// <summary>The spans tagged with <paramref name="gid"/>, in the order they ended.</summary>
    public IReadOnlyList<Activity> Of(string gid) => [.. _stopped.Where(a => a.GetTagItem("treaty.gid") as string == gid)];

    public void Dispose() => _listener.Dispose();
}

/// <summary>One measurement: the instrument, its value and its tags, and the Meter it came from
/// (several coordinators in one process each have their own Meter <c>Treaty</c>).</summary>
public sealed record Measurement(string Instrument, string? Unit, double Value, IReadOnlyDictionary<string, object?> Tags, Meter? Meter = null)
{
    public bool Has(string tag, object? value) => Tags.TryGetValue(tag, out var actual) && Equals(actual, value);
}

/// <summary>Records every measurement of the Meters named <paramref name="meter"/> (process-wide, as spans are).</summary>
public sealed class MetricRecorder : IDisposable
{
    private readonly MeterListener _listener = new();
    private readonly ConcurrentQueue<Measurement> _measurements = new();

    public MetricRecorder(string meter = "Treaty")
    {
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter.Name == meter)
            {
                listener.EnableMeasurementEvents(instrument);
            }
        };
        _listener.SetMeasurementEventCallback<long>((i, v, t, _) => Add(i, v, t));
        _listener.SetMeasurementEventCallback<int>((i, v, t, _) => Add(i, v, t));
        _listener.SetMeasurementEventCallback<double>((i, v, t, _) => Add(i, v, t));
        _listener.Start();
    }

    /// <summary>Every measurement of <paramref name="instrument"/> so far.</summary>
    public IReadOnlyList<Measurement> Of(string instrument) => [.. _measurements.Where(m => m.Instrument == instrument)];

    /// <summary>Asks every observable instrument (the gauges) for its value now.</summary>
    public void Observe() => _listener.RecordObservableInstruments();

    private void Add(Instrument instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
    {
        var copy = new Dictionary<string, object?>(StringComparer.Ordinal);
        foreach (var (key, tagValue) in tags)
        {
            copy[key] = tagValue;
        }

        _measurements.Enqueue(new Measurement(instrument.Name, instrument.Unit, value, copy, instrument.Meter));
    }

    public void Dispose() => _listener.Dispose();
}

/// <summary>One log line with the scopes it was written in.</summary>
public sealed record CapturedLog(string Category, EventId EventId, LogLevel Level, string Message, IReadOnlyList<object?> Scopes)
{
    /// <summary>How many open scopes carry a <c>gid</c>.</summary>
    public int GidScopes => Scopes.OfType<IEnumerable<KeyValuePair<string, object?>>>().SelectMany(s => s).Count(p => p.Key == "gid");

    /// <summary>The <c>gid</c> of the innermost scope that has one, or null.</summary>
    public string? ScopeGid => Scopes
        .OfType<IEnumerable<KeyValuePair<string, object?>>>()
        .SelectMany(s => s)
        .Where(p => p.Key == "gid")
        .Select(p => p.Value as string)
        .LastOrDefault();

    /// <summary>
    /// Every line names exactly one of <paramref name="gids"/> and is written in that gid's scope,
    /// opened once (not nested twice).
    /// </summary>
    public static void ShouldEachBeInTheScopeOfTheGidTheyName(IEnumerable<CapturedLog> lines, IReadOnlyCollection<string> gids)
    {
        foreach (var line in lines)
        {
            var about = gids.Where(g => line.Message.Contains(g, StringComparison.Ordinal)).ToList();
            var what = $"{line.EventId.Id} {line.Category}: {line.Message} (scope gid {line.ScopeGid ?? "none"}, {line.GidScopes} gid scopes)";
            about.Count.ShouldBe(1, what);
            line.ScopeGid.ShouldBe(about[0], what);
            line.GidScopes.ShouldBe(1, what);
        }
    }
}

/// <summary>An ILoggerProvider that keeps every line and its scopes (it takes the host's scope provider).</summary>
public sealed class CapturingLoggerProvider : ILoggerProvider, ISupportExternalScope
{
    private readonly ConcurrentQueue<CapturedLog> _logs = new();
    private IExternalScopeProvider _scopes = new LoggerExternalScopeProvider();

    public IReadOnlyList<CapturedLog> Logs => [.. _logs];

    public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

    public void SetScopeProvider(IExternalScopeProvider scopeProvider) => _scopes = scopeProvider;

    public void Dispose()
    {
    }

    private sealed class Logger(CapturingLoggerProvider provider, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => provider._scopes.Push(state);

        public bool IsEnabled(LogLevel logLevel) => logLevel != LogLevel.None;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            var scopes = new List<object?>();
            provider._scopes.ForEachScope(static (scope, list) => list.Add(scope), scopes);
            provider._logs.Enqueue(new CapturedLog(category, eventId, logLevel, formatter(state, exception), scopes));
        }
    }
}
