using System.Text.Json;
using Treaty.Client;
using Treaty.Core.Contracts;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Serialization;
using Treaty.Messaging;

namespace Treaty.Simulation.Harness.Choreography;

/// <summary>
/// The kit reporter's way to the coordinator in the simulation, in place of <see cref="TreatyClient"/>:
/// the batch goes as the client's JSON body into the simulation's coordinator process, which handles
/// it as the server's <c>POST /api/v1/choreography/events</c> does (<see cref="ChoreographyEventParser"/>,
/// then <see cref="TransactionEngine.ReportEventAsync"/> per event, 409 when a gid is another
/// protocol's or busy). Faults on the way: the request is lost, the answer is lost, the coordinator
/// crashes while it records (its store's write fates), the service crashes once the answer arrived and
/// before the reporter marked its rows. A request without an answer fails after the reporter's
/// request timeout, as HttpClient's does, with a <see cref="TaskCanceledException"/>.
/// </summary>
internal sealed class SimReportChannel(ChoreographyWorld world, ChoreographyService service, SimNode node, Random random, TimeSpan requestTimeout, Func<bool> crashBeforeMark)
    : IReportChannel
{
    /// <summary>The server's default clip of a timeline payload (TreatyServerDefaults.TimelineBodyBytes).</summary>
    private const int PayloadBytes = 2_048;

    public Task<ChoreographyReportView> ReportEventsAsync(IReadOnlyList<ChoreographyEventRequest> events, CancellationToken cancellationToken)
    {
        service.ReportsSent += events.Count;
        // The request on the wire, as TreatyClient writes it, read back as the server reads it.
        var body = JsonSerializer.SerializeToElement(new ReportChoreographyEventsRequest(events), TreatyJsonContext.Default.ReportChoreographyEventsRequest);
        return CallAsync($"report of {events.Count} event(s)", events.Count, engine => RecordAsync(engine, body), afterAnswer: true);
    }

    public Task<string?> ProtocolOfAsync(string gid, CancellationToken cancellationToken) =>
        CallAsync($"GET {gid}", 0, async engine => (await engine.GetAsync(gid, CancellationToken.None))?.Spec.Protocol.ToWire(), afterAnswer: false);

    public void Dispose()
    {
    }

    /// <summary>The choreography endpoint of the server (TransactionsApi.ReportEventsAsync): the same parse, the same recording (ChoreographyReports), the same answers.</summary>
    private async Task<ChoreographyReportView> RecordAsync(TransactionEngine engine, JsonElement body)
    {
        var parsed = ChoreographyEventParser.Parse(body, PayloadBytes);
        if (!parsed.IsValid)
        {
            throw new TreatyApiException(400, new ProblemView(ProblemTypes.Validation, "Validation failed", 400, parsed.Errors[0].Message, null,
                parsed.Errors.GroupBy(e => e.Field).ToDictionary(g => g.Key, g => g.Select(e => e.Message).ToArray())));
        }

        var recorded = await ChoreographyReports.RecordAsync(engine, parsed.Events, CancellationToken.None);
        service.ReportDuplicates += recorded.Count(r => r.Result.Status == ReportStatus.Duplicate);
        var conflicts = recorded.Count(r => r.IsConflict);

        if (conflicts > 0)
        {
            throw new TreatyApiException(409, new ProblemView(ProblemTypes.GidConflict, "Gid already used", 409,
                $"{conflicts} of {parsed.Events.Count} events were not recorded; the others were.", null, null));
        }

        return new ChoreographyReportView([.. recorded.Select(r => r.View)]);
    }

    private async Task<T> CallAsync<T>(string what, int events, Func<TransactionEngine, Task<T>> work, bool afterAnswer)
    {
        var answer = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        var reached = false;
        world.Scheduler.At(node, requestTimeout, () =>
        {
            if (answer.TrySetException(new TaskCanceledException($"simulated: no answer to the {what} within {requestTimeout.TotalMilliseconds:0} ms", new TimeoutException())))
            {
                service.ReportsUnanswered += reached ? 1 : 0; // the coordinator had it, and crashed or lost the answer
            }
        });
        if (world.Faults.Active && random.NextDouble() < world.Faults.LoseReport)
        {
            service.ReportsLost += events;
            Trace(node.Name, $"{what} LOST");
            return await answer.Task;
        }

        world.ToCoordinator(world.Latency(), async engine =>
        {
            reached = true;
            T result;
            Exception? refused = null;
            try
            {
                result = await work(engine);
            }
            catch (TreatyApiException exception)
            {
                (result, refused) = (default!, exception);
            }

            // Still here: the coordinator did not crash at one of the writes.
            if (world.Faults.Active && random.NextDouble() < world.Faults.LoseReport)
            {
                service.ReportsLost += events;
                world.TraceCoordinator($"answer to {service.Name}'s {what} LOST");
                return;
            }

            world.Scheduler.At(node, world.Latency(), () =>
            {
                if (answer.Task.IsCompleted)
                {
                    return; // timed out already
                }

                if (afterAnswer && refused is null && crashBeforeMark())
                {
                    return; // the process is gone before the reporter marked the rows
                }

                if (refused is not null)
                {
                    answer.TrySetException(refused);
                }
                else
                {
                    answer.TrySetResult(result);
                }
            });
        });
        return await answer.Task;
    }

    private void Trace(string at, string text) => world.Scheduler.Trace.Add(world.Scheduler, at, text);
}
