using System.Text.Json;
using Treaty.Client;
using Treaty.Core.Contracts;

namespace Treaty.Cli.Tests.Support;

/// <summary>Sagas in the states the <c>tx</c> tests need, on a <see cref="TinyParticipant"/>.</summary>
internal static class Sagas
{
    private static readonly JsonElement EmptyPayload = JsonDocument.Parse("{}").RootElement;

    /// <summary>One step that answers 200: committed before this returns.</summary>
    public static async Task CommittedAsync(TreatyClient client, TinyParticipant participant, string gid)
    {
        var view = await client.Saga(gid).WithPayload(EmptyPayload)
            .Step("s1", participant.Url + "/ok/s1", participant.Url + "/ok/s1-undo")
            .SubmitAsync(wait: TimeSpan.FromSeconds(20));
        view.Status.ShouldBe("committed");
    }

    /// <summary>s2 declines, s1's compensation answers 503 twice: stuck while aborting (as in OperatorTests).</summary>
    public static async Task StuckAsync(TreatyClient client, TinyParticipant participant, string gid)
    {
        // A long capped delay: once stuck, only an operator's retry moves it on within the test.
        var retry = new RetrySettings(2, TimeSpan.FromMilliseconds(10), TimeSpan.FromMinutes(1));
        await client.Saga(gid).WithPayload(EmptyPayload)
            .Step("s1", participant.Url + "/ok/s1", participant.Url + "/down/s1-undo", retry: retry)
            .Step("s2", participant.Url + "/no/s2", participant.Url + "/ok/s2-undo")
            .SubmitAsync();
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        while (await client.GetAsync(gid, deadline.Token) is not { Stuck: true })
        {
            await Task.Delay(50, deadline.Token);
        }
    }

    /// <summary>A step that answers 503 with 100 attempts a second apart: running (and abortable) for the whole test.</summary>
    public static Task<TransactionView> RetryingAsync(TreatyClient client, TinyParticipant participant, string gid) =>
        client.Saga(gid).WithPayload(EmptyPayload)
            .Step("s1", participant.Url + "/down/s1", participant.Url + "/ok/s1-undo",
                retry: new RetrySettings(100, TimeSpan.FromSeconds(1), TimeSpan.FromMinutes(1)))
            .SubmitAsync();
}
