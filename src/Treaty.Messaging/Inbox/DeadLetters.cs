using System.Data.Common;
using System.Text;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Treaty.AspNetCore.Data;
using Treaty.Messaging.Transport;

namespace Treaty.Messaging;

/// <summary>A message this service gave up on, with the final error and every attempt.</summary>
/// <param name="Id">The operator's handle for <see cref="DeadLetters.ReplayAsync"/>.</param>
/// <param name="Subscriber">This service, as the inbox names it.</param>
/// <param name="MessageId">The message's id.</param>
/// <param name="Type">The message's type.</param>
/// <param name="CorrelationId">The business transaction (the saga's gid).</param>
/// <param name="Body">The payload, JSON.</param>
/// <param name="Source">The publishing service.</param>
/// <param name="CreatedAt">When it was published.</param>
/// <param name="Error">The last attempt's error.</param>
/// <param name="DeadLetteredAt">When it was given up on.</param>
/// <param name="ReplayedAt">When a replay handled it.</param>
/// <param name="Attempts">Every failed handling, oldest first (archived ones from before a replay included).</param>
/// <param name="Status"><c>dead</c>, <c>replaying</c> (put back, not handled yet) or <c>replayed</c> (handled on replay).</param>
public sealed record DeadLetter(
    long Id,
    string Subscriber,
    string MessageId,
    string Type,
    string CorrelationId,
    string Body,
    string Source,
    DateTimeOffset CreatedAt,
    string Error,
    DateTimeOffset DeadLetteredAt,
    string Status,
    DateTimeOffset? ReplayedAt,
    IReadOnlyList<DeliveryAttempt> Attempts)
{
    /// <summary>The publisher's W3C trace context, carried on to the replay.</summary>
    public string? TraceParent { get; init; }
}

/// <summary>One failed handling.</summary>
/// <param name="Seq">1, 2, ... per message, across replays.</param>
/// <param name="At">When it failed.</param>
/// <param name="Error">The exception.</param>
/// <param name="Archived">Made before an operator's replay: kept, no longer counted.</param>
public sealed record DeliveryAttempt(int Seq, DateTimeOffset At, string Error, bool Archived);

/// <summary>The operator's view of this service's dead letters, and replay.</summary>
public sealed class DeadLetters
{
    private readonly ParticipantDatabase _database;
    private readonly string _subscriber;
    private readonly TimeProvider _time;
    private readonly Action _nudge;
    private readonly ILogger _logger;

    internal DeadLetters(ParticipantDatabase database, string subscriber, TimeProvider time, Action nudge, ILogger logger)
    {
        _logger = logger;
        _database = database;
        _subscriber = subscriber;
        _time = time;
        _nudge = nudge;
    }

    /// <summary>Every dead letter of this service (replayed ones included, with their status), oldest first.</summary>
    public async Task<IReadOnlyList<DeadLetter>> ListAsync(CancellationToken cancellationToken)
    {
        await using var transaction = await _database.BeginAsync(cancellationToken);
        var letters = await ReadAsync(transaction, "SELECT " + MessagingSql.DeadLetterColumns + " FROM treaty_dead_letters WHERE subscriber = @subscriber ORDER BY id", [("subscriber", _subscriber)], cancellationToken);
        var result = new List<DeadLetter>(letters.Count);
        foreach (var letter in letters)
        {
            result.Add(letter with { Attempts = await ReadAttemptsAsync(transaction, letter.MessageId, cancellationToken) });
        }

        await transaction.CommitAsync(cancellationToken);
        return result;
    }

    /// <summary>Dead letter <paramref name="id"/> of this service with its attempts, or null when there is none.</summary>
    public async Task<DeadLetter?> FindAsync(long id, CancellationToken cancellationToken)
    {
        await using var transaction = await _database.BeginAsync(cancellationToken);
        var found = await ReadAsync(transaction, "SELECT " + MessagingSql.DeadLetterColumns + " FROM treaty_dead_letters WHERE id = @id AND subscriber = @subscriber", [("id", id), ("subscriber", _subscriber)], cancellationToken);
        var letter = found.Count == 0 ? null : found[0] with { Attempts = await ReadAttemptsAsync(transaction, found[0].MessageId, cancellationToken) };
        await transaction.CommitAsync(cancellationToken);
        return letter;
    }

    /// <summary>
    /// Puts dead letter <paramref name="id"/> back for delivery to this service's handler: its
    /// attempt count starts again (the history is kept, archived) and the replay worker delivers
    /// it, retrying with backoff, until it is handled or dead-lettered again. False when there is
    /// no such dead letter in status <c>dead</c>.
    /// </summary>
    public async Task<bool> ReplayAsync(long id, CancellationToken cancellationToken)
    {
        await using var transaction = await _database.BeginAsync(cancellationToken);
        var found = await ReadAsync(transaction, "SELECT " + MessagingSql.DeadLetterColumns + " FROM treaty_dead_letters WHERE id = @id AND subscriber = @subscriber AND status = 'dead'", [("id", id), ("subscriber", _subscriber)], cancellationToken);
        if (found.Count == 0)
        {
            return false;
        }

        await using (var archive = transaction.CreateCommand(MessagingSql.ArchiveAttempts, ("subscriber", _subscriber), ("message_id", found[0].MessageId)))
        {
            await archive.ExecuteNonQueryAsync(cancellationToken);
        }

        await using (var mark = transaction.CreateCommand(MessagingSql.MarkReplaying, ("now", MessagingSql.Time(_database.Dialect, _time.GetUtcNow())), ("id", id)))
        {
            // Two replays of one letter at once both saw it dead; only the one whose update still
            // finds it dead puts it back (the other's archive rolls back with it): one delivery.
            if (await mark.ExecuteNonQueryAsync(cancellationToken) == 0)
            {
                return false;
            }
        }

        await transaction.CommitAsync(cancellationToken);
        using (_logger.BeginCorrelationScope(found[0].CorrelationId))
        {
            MessagingLog.Replaying(_logger, id, found[0].MessageId);
        }

        _nudge();
        return true;
    }

    internal static async Task<List<DeadLetter>> ReadAsync(ParticipantTransaction transaction, string sql, (string, object?)[] parameters, CancellationToken cancellationToken)
    {
        var letters = new List<DeadLetter>();
        await using var select = transaction.CreateCommand(sql, parameters);
        await using var reader = await select.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            letters.Add(Read(reader));
        }

        return letters;
    }

    private static DeadLetter Read(DbDataReader reader) => new(
        Id: reader.GetInt64(0),
        Subscriber: reader.GetString(1),
        MessageId: reader.GetString(2),
        Type: reader.GetString(3),
        CorrelationId: reader.GetString(4),
        Body: reader.GetString(5),
        Source: reader.GetString(7),
        CreatedAt: MessagingSql.ReadTime(reader, 8),
        Error: reader.GetString(9),
        DeadLetteredAt: MessagingSql.ReadTime(reader, 10),
        Status: reader.GetString(11),
        ReplayedAt: MessagingSql.ReadNullableTime(reader, 12),
        Attempts: [])
    {
        TraceParent = reader.IsDBNull(6) ? null : reader.GetString(6),
    };

    private async Task<IReadOnlyList<DeliveryAttempt>> ReadAttemptsAsync(ParticipantTransaction transaction, string messageId, CancellationToken cancellationToken)
    {
        var attempts = new List<DeliveryAttempt>();
        await using var select = transaction.CreateCommand(MessagingSql.SelectAttempts, ("subscriber", _subscriber), ("message_id", messageId));
        await using var reader = await select.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            attempts.Add(new DeliveryAttempt(reader.GetInt32(0), MessagingSql.ReadTime(reader, 1), reader.GetString(2), reader.GetInt32(3) != 0));
        }

        return attempts;
    }
}

/// <summary>Delivers the dead letters an operator put back, through the same pipeline as the transport's deliveries.</summary>
internal sealed class ReplayWorker(
    ConsumerPipeline pipeline,
    ConsumerRegistry consumers,
    MessagingOptions options,
    TimeProvider time,
    ILogger<ReplayWorker> logger,
    Func<double>? random01 = null) : BackgroundService
{
    private readonly Func<double> _random01 = random01 ?? Random.Shared.NextDouble;
    private readonly WakeSignal _wake = new();
    private readonly Dictionary<long, int> _failures = [];

    public void Nudge() => _wake.Set();

    /// <summary>Delivers every replay that is due once; returns how many were handled.</summary>
    public async Task<int> ReplayDueAsync(CancellationToken cancellationToken)
    {
        var database = pipeline.Database;
        List<DeadLetter> due;
        await using (var transaction = await database.BeginAsync(cancellationToken))
        {
            due = await DeadLetters.ReadAsync(transaction, MessagingSql.SelectDueReplays, [("subscriber", pipeline.Subscriber), ("now", MessagingSql.Time(database.Dialect, time.GetUtcNow()))], cancellationToken);
            await transaction.CommitAsync(cancellationToken);
        }

        var handled = 0;
        foreach (var letter in due)
        {
            using var scope = logger.BeginCorrelationScope(letter.CorrelationId);
            var message = new TransportMessage(letter.MessageId, letter.Type, letter.CorrelationId, Encoding.UTF8.GetBytes(letter.Body), letter.TraceParent, letter.Source, letter.CreatedAt);
            var outcome = consumers.TryGet(letter.Type, out var consumer)
                ? await pipeline.DeliverAsync(message, consumer, cancellationToken)
                : DeliveryOutcome.Retry;
            await using var transaction = await database.BeginAsync(cancellationToken);
            if (outcome == DeliveryOutcome.Handled)
            {
                _failures.Remove(letter.Id);
                await using var mark = transaction.CreateCommand(MessagingSql.MarkReplayed, ("now", MessagingSql.Time(database.Dialect, time.GetUtcNow())), ("id", letter.Id));
                await mark.ExecuteNonQueryAsync(cancellationToken);
                MessagingLog.Replayed(logger, letter.Id, letter.MessageId);
                handled++;
            }
            else if (outcome == DeliveryOutcome.Retry)
            {
                var failures = _failures[letter.Id] = _failures.GetValueOrDefault(letter.Id) + 1;
                var next = time.GetUtcNow() + options.RetryBackoff(failures, _random01());
                await using var postpone = transaction.CreateCommand(MessagingSql.PostponeReplay, ("next", MessagingSql.Time(database.Dialect, next)), ("id", letter.Id));
                await postpone.ExecuteNonQueryAsync(cancellationToken);
            }
            else
            {
                _failures.Remove(letter.Id); // dead again: the pipeline set its status back to dead
            }

            await transaction.CommitAsync(cancellationToken);
        }

        return handled;
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                await ReplayDueAsync(stoppingToken);
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                return;
            }
            catch (Exception exception)
            {
                MessagingLog.ReplayLoopFailed(logger, exception);
            }

            await _wake.WaitAsync(options.RetryDelay, time, stoppingToken); // a replay asked for, the poll, or stopping
        }
    }
}

/// <summary>This service's handlers, one per message type, registered explicitly.</summary>
internal sealed class ConsumerRegistry
{
    private readonly Dictionary<string, Func<IServiceProvider, MessageConsumer>> _factories = new(StringComparer.Ordinal);
    private readonly Dictionary<string, MessageConsumer> _consumers = new(StringComparer.Ordinal);

    public IReadOnlyList<string> Types => [.. _factories.Keys];

    public void Add(string type, MessageConsumer consumer) => Add(type, _ => consumer);

    public void Add(string type, Func<IServiceProvider, MessageConsumer> factory)
    {
        if (!_factories.TryAdd(type, factory))
        {
            throw new InvalidOperationException($"A handler for '{type}' is already registered; one handler per type per service.");
        }
    }

    /// <summary>Makes the handlers from the container, once, before the first delivery.</summary>
    public void Resolve(IServiceProvider services)
    {
        lock (_consumers)
        {
            foreach (var (type, factory) in _factories)
            {
                if (!_consumers.ContainsKey(type))
                {
                    _consumers[type] = factory(services);
                }
            }
        }
    }

    public bool TryGet(string type, out MessageConsumer consumer)
    {
        lock (_consumers)
        {
            return _consumers.TryGetValue(type, out consumer!);
        }
    }
}
