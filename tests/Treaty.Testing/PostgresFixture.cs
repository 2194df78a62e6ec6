namespace Treaty.Testing;

/// <summary>
/// One PostgreSQL cluster (<see cref="PostgresServer"/>) for an xUnit collection or class fixture;
/// each test makes its own database on it. A test assembly declares its own collection over it
/// (xUnit looks for collection definitions in the test assembly only).
/// </summary>
public sealed class PostgresFixture : IAsyncLifetime
{
    public PostgresServer Server { get; private set; } = null!;

    public async Task InitializeAsync() => Server = await PostgresServer.StartAsync();

    public async Task DisposeAsync()
    {
        if (Server is not null)
        {
            await Server.DisposeAsync();
        }
    }
}
