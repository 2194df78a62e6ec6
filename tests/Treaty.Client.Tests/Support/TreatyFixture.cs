using Treaty.Testing;
namespace Treaty.Client.Tests.Support;

/// <summary>A coordinator, a participant and a client, shared by the tests of one class.</summary>
public sealed class TreatyFixture : IAsyncLifetime
{
    public InProcessCoordinator Coordinator { get; private set; } = null!;

    public TinyParticipant Participant { get; private set; } = null!;

    public TreatyClient Client { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        try
        {
            Participant = await TinyParticipant.StartAsync();
            Coordinator = await InProcessCoordinator.StartAsync(prefix: "treaty-client-tests");
            Client = new TreatyClient(Coordinator.BaseAddress);
        }
        catch
        {
            await DisposeAsync(); // a fixture whose InitializeAsync failed may not be disposed by xunit
            throw;
        }
    }

    /// <summary>Idempotent: it also runs when <see cref="InitializeAsync"/> fails.</summary>
    public async Task DisposeAsync()
    {
        var (client, coordinator, participant) = (Client, Coordinator, Participant);
        (Client, Coordinator, Participant) = (null!, null!, null!);
        client?.Dispose();
        try
        {
            if (coordinator is not null)
            {
                await coordinator.DisposeAsync();
            }
        }
        finally
        {
            if (participant is not null)
            {
                await participant.DisposeAsync();
            }
        }
    }

    /// <summary>A gid unique to this run, readable in failures.</summary>
    public static string NewGid(string prefix) => $"{prefix}-{Guid.NewGuid():N}"[..(prefix.Length + 13)];
}
